"""``semi``: plain pseudo-labelling with the SegFormer head, AllSpark's loop without the bottleneck.

Per step, as the AllSpark release: an eval-mode forward of the unlabeled batch without grad gives
pseudo logits and their argmax labels; a train-mode forward of cat(labeled, unlabeled); loss =
(labeled loss + CE on the pseudo labels) / 2.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import IGNORE_INDEX, PAD_UNLABELED
from .base import Method, adamw_two_groups, label_accuracy
from .weak_to_strong import EMATeacher, cutmix, masked_unlabeled_loss

__all__ = ["PseudoLabel"]


class PseudoLabel(Method):
    """The pseudo-labelling loop. With its defaults it is the AllSpark release's; the options (config
    keys of ``allspark``) bring UniMatch V2's parts into it:

    - ``teacher``: ``self`` (the model in eval mode, the release) or ``ema`` (an EMA teacher, evaluated
      and checkpointed beside the model, as UniMatch V2's);
    - ``strong_aug``: the unlabeled half trains on a strong view CutMixed with the flipped batch, while the
      pseudo labels come from the weak view and are CutMixed alike (so are the pseudo logits handed to the
      AllSpark bottleneck, for Channel Semantic Grouping and S-Mem);
    - ``conf_thresh`` > 0: UniMatch's masked unlabeled loss (confident pixels only, divided by the count of
      all counted pixels); 0 keeps the release's plain cross-entropy;
    - ``optimizer``: ``sgd`` (the release) or ``adamw`` (UniMatch V2's, see :func:`adamw_two_groups`).
    """

    name = "semi"
    decoders = ("segformer",)
    # false (the release): padded pixels of unlabeled crops enter the unlabeled loss; true leaves them out
    config_keys = {"ignore_unlabeled_padding": (False, bool, False, None)}

    def __init__(self, criterion_l, ignore_unlabeled_padding=False, teacher="self", strong_aug=False,
                 conf_thresh=0.0, optimizer="sgd"):
        self.criterion_l = criterion_l
        self.criterion_u = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.ignore_unlabeled_padding = ignore_unlabeled_padding
        self.teacher_kind, self.strong_aug, self.conf_thresh = teacher, strong_aug, float(conf_thresh)
        self.optimizer = optimizer
        self.teacher = None
        self.unlabeled_mode = "train_u_strong" if strong_aug else "train_u"
        if self.conf_thresh > 0:
            self.log_keys = {**type(self).log_keys, "mask_ratio": "Mask ratio"}

    @classmethod
    def from_config(cls, cfg, model, criterion_l):
        return cls(criterion_l, cfg["ignore_unlabeled_padding"])

    def setup(self, model):
        """The EMA teacher when ``teacher`` is ``ema`` (a copy of the bare model on its device)."""
        if self.teacher_kind == "ema":
            self.teacher = EMATeacher(model)
        return self

    def build_optimizer(self, model, lr, lr_multi):
        return adamw_two_groups(model, lr, lr_multi) if self.optimizer == "adamw" else super().build_optimizer(
            model, lr, lr_multi)

    def forward_kwargs(self, pseudo, epoch):
        """Extra arguments of the training forward (AllSpark hands the bottleneck its pseudo logits)."""
        return {}

    def losses(self, net, batch, epoch, **kwargs):
        (img_x, mask_x), unlabeled = batch
        unlabeled, truth = self.split_truth(unlabeled)
        if self.strong_aug:  # weak view, strong view 1 (the second is not used), ignore mask (255), box 1
            img_w, img_u, _, ignore_u, box, _ = unlabeled
            padded = ignore_u == IGNORE_INDEX
        else:
            img_w, ignore_u = unlabeled
            img_u = img_w
            padded = ignore_u == PAD_UNLABELED
        if self.teacher is not None:
            pseudo = self.teacher.predict(img_w)
        else:
            with torch.no_grad():
                net.eval()
                pseudo = net(img_w).detach()
        net.train()
        mask_u = pseudo.argmax(dim=1)
        conf = pseudo.softmax(dim=1).max(dim=1)[0] if self.conf_thresh > 0 else None
        stats = {} if truth is None else {"pseudo_acc": label_accuracy(mask_u, truth)}
        if conf is not None:  # the share of confident counted pixels, before CutMix (UniMatch's log)
            counted = self._counted(padded)
            stats["mask_ratio"] = ((conf >= self.conf_thresh) & counted).sum() / counted.sum()
        if self.strong_aug:
            img_u, pseudo, mask_u, padded = (cutmix(t, box) for t in (img_u, pseudo, mask_u, padded))
            conf = cutmix(conf, box) if conf is not None else None
        if self.ignore_unlabeled_padding:
            mask_u = mask_u.masked_fill(padded, IGNORE_INDEX)  # (a boolean index would sync)
        preds = net(torch.cat((img_x, img_u)), **self.forward_kwargs(pseudo, epoch))
        pred_x, pred_u = preds.split([img_x.shape[0], img_u.shape[0]])
        loss_x = self.criterion_l(pred_x, mask_x)
        if conf is None:
            loss_u = self.criterion_u(pred_u, mask_u)
        else:
            pixel = F.cross_entropy(pred_u, mask_u, ignore_index=IGNORE_INDEX, reduction="none")
            loss_u = masked_unlabeled_loss(pixel, conf, self.conf_thresh, self._counted(padded))
        return {"loss": (loss_x + loss_u) / 2.0, "loss_x": loss_x, "loss_u": loss_u, **stats}

    def _counted(self, padded):
        """The unlabeled pixels that count in the loss: all (the release) or the unpadded ones."""
        return ~padded if self.ignore_unlabeled_padding else torch.ones_like(padded)

    def after_step(self, model, iters):
        if self.teacher is not None:
            self.teacher.update(model, iters)

    def eval_models(self, model):
        return [("", model)] + ([("ema", self.teacher.module)] if self.teacher is not None else [])

    def extra_modules(self):
        return {"model_ema": self.teacher.module} if self.teacher is not None else {}
