"""``semi``: plain pseudo-labelling with the SegFormer head, AllSpark's loop without the bottleneck.

Per step, as the AllSpark release: an eval-mode forward of the unlabeled batch without grad gives
pseudo logits and their argmax labels; a train-mode forward of cat(labeled, unlabeled); loss =
(labeled loss + CE on the pseudo labels) / 2. UniMatch V2's parts are options (see :class:`PseudoLabel`).
"""
import torch
import torch.nn as nn

from ..config import IGNORE_INDEX, ConfigError, Key
from .base import PSEUDO_ACCURACY, Method, adamw_two_groups, label_accuracy
from .weak_to_strong import EMATeacher, cutmix, pseudo_labels

__all__ = ["PseudoLabel"]


class PseudoLabel(Method):
    """The pseudo-labelling loop (``semi``, and ``allspark`` with its bottleneck). With its defaults it is
    the AllSpark release's; the options (config keys, shared by both methods) bring UniMatch V2's parts in:

    - ``teacher``: ``self`` (the model in eval mode, the release) or ``ema`` (an EMA teacher, evaluated
      and checkpointed beside the model, as UniMatch V2's);
    - ``strong_aug``: the unlabeled half trains on a strong view CutMixed with the flipped batch, while the
      pseudo labels come from the weak view and are CutMixed alike (so are the pseudo logits handed to the
      AllSpark bottleneck, for Channel Semantic Grouping and S-Mem);
    - ``conf_thresh`` > 0: UniMatch's masked unlabeled loss (confident pixels only, divided by the count of
      all counted pixels); 0 keeps the release's plain cross-entropy;
    - ``optimizer``: ``sgd`` (the release) or ``adamw`` (UniMatch V2's, see :func:`adamw_two_groups`);
    - ``ignore_unlabeled_padding``: false (the release): padded pixels of unlabeled crops enter the
      unlabeled loss; true leaves them out.
    """

    name = "semi"
    decoders = ("segformer",)
    config_keys = {"ignore_unlabeled_padding": Key(types=bool, default=False),
                   "teacher": Key(default="self", allowed=("self", "ema")),
                   "strong_aug": Key(types=bool, default=False),
                   "conf_thresh": Key(types=(int, float), default=0.0),
                   "optimizer": Key(default="sgd", allowed=("sgd", "adamw"))}

    def __init__(self, criterion_l, ignore_unlabeled_padding=False, teacher="self", strong_aug=False,
                 conf_thresh=0.0, optimizer="sgd"):
        self.criterion_l = criterion_l
        self.criterion_u = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.ignore_unlabeled_padding = ignore_unlabeled_padding
        self.teacher_kind, self.strong_aug, self.conf_thresh = teacher, strong_aug, float(conf_thresh)
        self.optimizer_name = optimizer
        self.unlabeled_mode = "train_u_strong" if strong_aug else "train_u"
        if self.conf_thresh > 0:
            self.log_keys = {**type(self).log_keys, "mask_ratio": "Mask ratio"}

    @classmethod
    def check_config(cls, cfg, source="config"):
        super().check_config(cfg, source)
        if not 0 <= cfg["conf_thresh"] < 1:
            raise ConfigError(f"{source}: conf_thresh must be in [0, 1) (0: every pixel counts), got {cfg['conf_thresh']}")

    @classmethod
    def options(cls, cfg):
        """The constructor keywords of the config's options."""
        return dict(ignore_unlabeled_padding=cfg["ignore_unlabeled_padding"], teacher=cfg["teacher"],
                    strong_aug=cfg["strong_aug"], conf_thresh=cfg["conf_thresh"], optimizer=cfg["optimizer"])

    @classmethod
    def from_config(cls, cfg, model, criterion_l):
        return cls(criterion_l, **cls.options(cfg)).setup(model)

    def setup(self, model):
        """The EMA teacher when ``teacher`` is ``ema`` (a copy of the bare model on its device)."""
        if self.teacher_kind == "ema":
            self.teacher = EMATeacher(model)
        return self

    def build_optimizer(self, model, lr, lr_multi):
        if self.optimizer_name == "adamw":
            return adamw_two_groups(model, lr, lr_multi)
        return super().build_optimizer(model, lr, lr_multi)

    def forward_kwargs(self, pseudo_logits, epoch):
        """Extra arguments of the training forward (AllSpark hands the bottleneck its pseudo logits)."""
        return {}

    def teacher_logits(self, net, img_w):
        """The pseudo logits of the weak view: the EMA teacher's, or the model's own in eval mode (the release)."""
        if self.teacher is not None:
            return self.teacher(img_w)
        with torch.no_grad():
            net.eval()
            return net(img_w).detach()

    def losses(self, net, batch, epoch, **kwargs):
        (img_x, mask_x), unlabeled = batch
        padded = unlabeled["padded"]
        counted = ~padded if self.ignore_unlabeled_padding else torch.ones_like(padded)
        pseudo = pseudo_labels(self.teacher_logits(net, unlabeled["img_w"]), counted, self.conf_thresh > 0)
        net.train()
        stats = {}
        if self.conf_thresh > 0:  # the share of confident counted pixels, before CutMix (UniMatch's log)
            stats["mask_ratio"] = pseudo.confident_share(self.conf_thresh)
        if "truth" in unlabeled:
            stats.update({key: label_accuracy(pseudo.labels, unlabeled["truth"]) for key in PSEUDO_ACCURACY})
        img_u = unlabeled["img_w"]
        if self.strong_aug:  # strong view 1 (the second is not used), box 1
            img_u, pseudo = cutmix(unlabeled["img_s1"], unlabeled["box1"]), pseudo.cutmix(unlabeled["box1"])
        if self.ignore_unlabeled_padding:
            pseudo.labels = pseudo.labels.masked_fill(~pseudo.counted, IGNORE_INDEX)  # (a boolean index would sync)
        preds = net(torch.cat((img_x, img_u)), **self.forward_kwargs(pseudo.logits, epoch))
        pred_x, pred_u = preds.split([img_x.shape[0], img_u.shape[0]])
        loss_x = self.criterion_l(pred_x, mask_x)
        if pseudo.conf is None:
            loss_u = self.criterion_u(pred_u, pseudo.labels)
        else:
            loss_u = pseudo.loss(pred_u, self.conf_thresh)
        return {"loss": (loss_x + loss_u) / 2.0, "loss_x": loss_x, "loss_u": loss_u, **stats}
