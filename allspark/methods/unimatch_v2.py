"""``unimatch_v2``: UniMatch V2's recipe (LiheYoung/UniMatch-V2, ``unimatch_v2.py``), step for step.

Per step: the EMA teacher's eval-mode logits on the weak view give pseudo labels (argmax) and
confidences (max softmax); each strong view is CutMixed with the batch flipped (image i takes image
B-1-i inside its own box); the student runs the labeled batch, then both strong views in one forward
with complementary dropout; the pseudo labels, confidences and ignore masks are CutMixed like the views;

    loss_u_s{1,2} = sum(CE * [conf >= conf_thresh] * [not ignored]) / count(not ignored)
    loss = (loss_x + (loss_u_s1 + loss_u_s2) / 2) / 2

AdamW (betas 0.9 / 0.999, weight decay 0.01) with the backbone at lr and the head at lr x lr_multi; after
the step the poly lr (set by the trainer) and the EMA update with ratio min(1 - 1 / (iters + 1), 0.996)
over parameters and buffers (a copy of the model at iteration 0). Model and EMA are evaluated each epoch.
"""
import torch
import torch.nn as nn

from ..data import IGNORE_INDEX
from .base import Method, adamw_two_groups, label_accuracy
from .weak_to_strong import EMATeacher, cutmix, ema_ratio, masked_unlabeled_loss

__all__ = ["UniMatchV2", "cutmix", "ema_ratio"]


class UniMatchV2(Method):
    name = "unimatch_v2"
    decoders = ("dpt",)
    labeled_mode = "train_l_weak"
    unlabeled_mode = "train_u_strong"
    cut_labeled = False  # its dataset tiles a shorter labeled list only
    log_keys = {"loss": "Total loss", "loss_x": "Loss x", "loss_s": "Loss s", "mask_ratio": "Mask ratio"}
    config_keys = {"conf_thresh": (False, (int, float), 0.95, None)}
    best_if_equal = True
    find_unused_parameters = True  # the release's DDP setting

    def __init__(self, criterion_l, conf_thresh=0.95):
        self.criterion_l = criterion_l
        self.criterion_u = nn.CrossEntropyLoss(reduction="none")
        self.conf_thresh = float(conf_thresh)
        self.teacher = self.ema = None

    @classmethod
    def from_config(cls, cfg, model, criterion_l):
        method = cls(criterion_l, cfg["conf_thresh"])
        method.setup(model)
        return method

    def setup(self, model):
        """The EMA teacher: a frozen copy of ``model`` (bare, on its device), kept in eval mode."""
        self.teacher = EMATeacher(model)
        self.ema = self.teacher.module
        return self.ema

    def build_optimizer(self, model, lr, lr_multi):
        return adamw_two_groups(model, lr, lr_multi)

    def unlabeled_loss(self, pred, mask, conf, ignore):
        """Pixel CE on the confident, non-ignored pixels, divided by the count of all non-ignored pixels."""
        return masked_unlabeled_loss(self.criterion_u(pred, mask), conf, self.conf_thresh, ignore != IGNORE_INDEX)

    def losses(self, net, batch, epoch, comp_drop_mask=None):
        """``comp_drop_mask`` (2B, D) replaces the complementary-dropout draw (tests inject the release's)."""
        (img_x, mask_x), unlabeled = batch
        (img_u_w, img_u_s1, img_u_s2, ignore_mask, box1, box2), truth = self.split_truth(unlabeled)
        pred_u_w = self.teacher.predict(img_u_w)
        conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
        mask_u_w = pred_u_w.argmax(dim=1)
        img_u_s1, img_u_s2 = cutmix(img_u_s1, box1), cutmix(img_u_s2, box2)
        net.train()
        pred_x = net(img_x)
        pred_u_s1, pred_u_s2 = net(torch.cat((img_u_s1, img_u_s2)), comp_drop=True,
                                   comp_drop_mask=comp_drop_mask).chunk(2)
        loss_x = self.criterion_l(pred_x, mask_x)
        loss_u_s1 = self.unlabeled_loss(pred_u_s1, *(cutmix(t, box1) for t in (mask_u_w, conf_u_w, ignore_mask)))
        loss_u_s2 = self.unlabeled_loss(pred_u_s2, *(cutmix(t, box2) for t in (mask_u_w, conf_u_w, ignore_mask)))
        loss_u_s = (loss_u_s1 + loss_u_s2) / 2.0
        valid = ignore_mask != IGNORE_INDEX
        mask_ratio = ((conf_u_w >= self.conf_thresh) & valid).sum() / valid.sum()  # un-mixed, for the log
        losses = {"loss": (loss_x + loss_u_s) / 2.0, "loss_x": loss_x, "loss_s": loss_u_s, "mask_ratio": mask_ratio}
        if truth is not None:
            losses["pseudo_acc"] = label_accuracy(mask_u_w, truth)
        return losses

    def after_step(self, model, iters):
        """EMA update of every parameter and buffer (after the optimizer step)."""
        self.teacher.update(model, iters)

    def eval_models(self, model):
        return [("", model), ("ema", self.ema)]

    def extra_modules(self):
        return {"model_ema": self.ema}
