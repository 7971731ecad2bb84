"""``unimatch_v2``: UniMatch V2's recipe (LiheYoung/UniMatch-V2, ``unimatch_v2.py``), step for step.

Per step: the EMA teacher's eval-mode logits on the weak view give pseudo labels (argmax) and
confidences (max softmax); each strong view is CutMixed with the batch flipped (image i takes image
B-1-i inside its own box); the student runs the labeled batch, then both strong views in one forward
with complementary dropout; the pseudo labels, confidences and counted pixels are CutMixed like the views;

    loss_u_s{1,2} = sum(CE * [conf >= conf_thresh] * [not padded]) / count(not padded)
    loss = (loss_x + (loss_u_s1 + loss_u_s2) / 2) / 2

AdamW (betas 0.9 / 0.999, weight decay 0.01) with the backbone at lr and the head at lr x lr_multi; after
the step the poly lr (set by the trainer) and the EMA update with ratio min(1 - 1 / (iters + 1), 0.996)
over parameters and buffers (a copy of the model at iteration 0). Model and EMA are evaluated each epoch.
"""
import torch

from ..config import ConfigError, Key
from .base import PSEUDO_ACCURACY, Method, adamw_two_groups, label_accuracy
from .weak_to_strong import EMATeacher, cutmix, pseudo_labels

__all__ = ["UniMatchV2"]


class UniMatchV2(Method):
    name = "unimatch_v2"
    decoders = ("dpt",)
    labeled_mode = "train_l_weak"
    unlabeled_mode = "train_u_strong"
    cut_labeled = False  # its dataset tiles a shorter labeled list only
    log_keys = {"loss": "Total loss", "loss_x": "Loss x", "loss_s": "Loss s", "mask_ratio": "Mask ratio"}
    config_keys = {"conf_thresh": Key(types=(int, float), default=0.95)}
    best_if_equal = True
    find_unused_parameters = True  # the release's DDP setting

    def __init__(self, criterion_l, conf_thresh=0.95):
        self.criterion_l = criterion_l
        self.conf_thresh = float(conf_thresh)

    @classmethod
    def check_config(cls, cfg, source="config"):
        super().check_config(cfg, source)
        if not 0 <= cfg["conf_thresh"] <= 1:
            raise ConfigError(f"{source}: conf_thresh must be in [0, 1], got {cfg['conf_thresh']}")

    @classmethod
    def from_config(cls, cfg, model, criterion_l):
        return cls(criterion_l, cfg["conf_thresh"]).setup(model)

    def setup(self, model):
        """The EMA teacher: a frozen copy of ``model`` (bare, on its device), kept in eval mode."""
        self.teacher = EMATeacher(model)
        return self

    def build_optimizer(self, model, lr, lr_multi):
        return adamw_two_groups(model, lr, lr_multi)

    def losses(self, net, batch, epoch, comp_drop_mask=None):
        """``comp_drop_mask`` (2B, D) replaces the complementary-dropout draw (tests inject the release's)."""
        (img_x, mask_x), u = batch
        pseudo = pseudo_labels(self.teacher(u["img_w"]), ~u["padded"], with_conf=True)
        img_u_s1, img_u_s2 = cutmix(u["img_s1"], u["box1"]), cutmix(u["img_s2"], u["box2"])
        net.train()
        pred_x = net(img_x)
        pred_u_s1, pred_u_s2 = net(torch.cat((img_u_s1, img_u_s2)), comp_drop=True,
                                   comp_drop_mask=comp_drop_mask).chunk(2)
        loss_x = self.criterion_l(pred_x, mask_x)
        loss_u_s1 = pseudo.cutmix(u["box1"]).loss(pred_u_s1, self.conf_thresh)
        loss_u_s2 = pseudo.cutmix(u["box2"]).loss(pred_u_s2, self.conf_thresh)
        loss_u_s = (loss_u_s1 + loss_u_s2) / 2.0
        losses = {"loss": (loss_x + loss_u_s) / 2.0, "loss_x": loss_x, "loss_s": loss_u_s,
                  "mask_ratio": pseudo.confident_share(self.conf_thresh)}  # un-mixed, for the log
        if "truth" in u:
            losses.update({key: label_accuracy(pseudo.labels, u["truth"]) for key in PSEUDO_ACCURACY})
        return losses
