"""``sup``: the supervised baseline on the labeled list alone (the AllSpark release's SGD recipe)."""
from .base import Method

__all__ = ["Supervised"]


class Supervised(Method):
    name = "sup"
    decoders = ("segformer",)
    unlabeled_mode = None
    log_keys = {"loss": "Total loss", "loss_x": "Loss x", "loss_u": "Loss u"}

    def __init__(self, criterion_l):
        self.criterion_l = criterion_l

    @classmethod
    def from_config(cls, cfg, model, criterion_l):
        return cls(criterion_l)

    def losses(self, net, batch, epoch, **kwargs):
        img_x, mask_x = batch
        loss_x = self.criterion_l(net(img_x), mask_x)
        return {"loss": loss_x, "loss_x": loss_x, "loss_u": loss_x.new_zeros(())}
