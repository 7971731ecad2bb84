"""``semi``: plain pseudo-labelling with the SegFormer head, AllSpark's loop without the bottleneck.

Per step, as the AllSpark release: an eval-mode forward of the unlabeled batch without grad gives
pseudo logits and their argmax labels; a train-mode forward of cat(labeled, unlabeled); loss =
(labeled loss + CE on the pseudo labels) / 2.
"""
import torch
import torch.nn as nn

from ..data import IGNORE_INDEX, PAD_UNLABELED
from .base import Method

__all__ = ["PseudoLabel"]


class PseudoLabel(Method):
    name = "semi"
    decoders = ("segformer",)
    # false (the release): padded pixels of unlabeled crops enter the unlabeled loss; true leaves them out
    config_keys = {"ignore_unlabeled_padding": (False, bool, False, None)}

    def __init__(self, criterion_l, ignore_unlabeled_padding=False):
        self.criterion_l = criterion_l
        self.criterion_u = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.ignore_unlabeled_padding = ignore_unlabeled_padding

    @classmethod
    def from_config(cls, cfg, model, criterion_l):
        return cls(criterion_l, cfg["ignore_unlabeled_padding"])

    def forward_kwargs(self, pseudo, epoch):
        """Extra arguments of the training forward (AllSpark hands the bottleneck its pseudo logits)."""
        return {}

    def losses(self, net, batch, epoch, **kwargs):
        (img_x, mask_x), (img_u, ignore_u) = batch
        with torch.no_grad():
            net.eval()
            pseudo = net(img_u).detach()
        net.train()
        mask_u = pseudo.argmax(dim=1)
        if self.ignore_unlabeled_padding:
            mask_u = mask_u.masked_fill(ignore_u == PAD_UNLABELED, IGNORE_INDEX)  # (a boolean index would sync)
        preds = net(torch.cat((img_x, img_u)), **self.forward_kwargs(pseudo, epoch))
        pred_x, pred_u = preds.split([img_x.shape[0], img_u.shape[0]])
        loss_x = self.criterion_l(pred_x, mask_x)
        loss_u = self.criterion_u(pred_u, mask_u)
        return {"loss": (loss_x + loss_u) / 2.0, "loss_x": loss_x, "loss_u": loss_u}
