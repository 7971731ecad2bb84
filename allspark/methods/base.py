"""What every training method shares, and the hooks where methods differ.

A method is one small object that owns what differs between recipes: which dataset views its loaders
yield, its optimizer, its per-step losses, extra state (an EMA teacher), extra checkpoint entries and
which models are evaluated. The trainer (``allspark.engine.trainer``) runs the rest the same way for all.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from ..config import IGNORE_INDEX, ConfigError
from ..models.builder import ALIASES, encoder_patch_size

__all__ = ["Method", "sgd_two_groups", "adamw_two_groups", "label_accuracy", "to_device", "PSEUDO_ACCURACY"]

# The log key of the pseudo labels' accuracy, logged when the unlabeled batches carry their true labels.
PSEUDO_ACCURACY = {"pseudo_acc": "Pseudo acc"}


def sgd_two_groups(model: nn.Module, lr: float, lr_multi: float) -> torch.optim.SGD:
    """The AllSpark release's optimizer: SGD (momentum 0.9, weight decay 1e-4), the backbone's
    parameters at ``lr`` and every other parameter at ``lr x lr_multi``."""
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.SGD([{"params": backbone, "lr": lr}, {"params": rest, "lr": lr * lr_multi}],
                           lr=lr, momentum=0.9, weight_decay=1e-4)


def adamw_two_groups(model: nn.Module, lr: float, lr_multi: float) -> torch.optim.AdamW:
    """UniMatch V2's optimizer: AdamW (betas 0.9 / 0.999, weight decay 0.01 on every parameter), the
    backbone's trainable parameters at ``lr`` (a locked backbone is left out) and every parameter whose
    name has no 'backbone' at ``lr x lr_multi``."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for name, p in model.named_parameters() if "backbone" not in name]
    return torch.optim.AdamW([{"params": backbone, "lr": lr}, {"params": head, "lr": lr * lr_multi}],
                             lr=lr, betas=(0.9, 0.999), weight_decay=0.01)


def label_accuracy(labels: torch.Tensor, truth: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Share of the pixels with a known true label (``truth`` != ignore) whose ``labels`` are right."""
    known = truth != ignore_index
    return ((labels == truth) & known).sum() / known.sum().clamp_min(1)


def to_device(batch, device: torch.device):
    """A loader batch (tensors in nested tuples, lists and dicts) on ``device``."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch.to(device, non_blocking=True)


class Method:
    """Base class of the training methods; these attributes describe the method to the trainer (a method's
    options may change ``unlabeled_mode`` and ``log_keys`` on the instance, which the trainer reads):

    - ``name``: the config's ``method`` value; ``decoders``: the decoder types it trains.
    - ``labeled_mode`` / ``unlabeled_mode``: the :class:`allspark.data.SemiDataset` modes of its two
      training loaders (``unlabeled_mode`` None: the labeled list alone, one epoch = one pass over it).
    - ``cut_labeled``: a labeled list longer than the unlabeled one is cut to its length (the AllSpark
      release) or kept whole (UniMatch V2's); a shorter one is tiled either way.
    - ``log_keys``: the values :meth:`losses` returns, in order, with their log labels; the first is
      the loss that is minimised. When the unlabeled batches carry the crops' true labels (``truth``),
      :meth:`losses` also returns their accuracy under :data:`PSEUDO_ACCURACY`'s key.
    - ``config_keys``: the method's own config keys (:class:`allspark.config.Key`), registered with the
      config layer.
    - ``best_if_equal``: whether an epoch that equals the best score becomes the best (UniMatch V2) or
      must beat it (AllSpark).
    - ``find_unused_parameters``: DistributedDataParallel's, also turned on by a model with parameters
      that get no gradient (modules with ``has_unused_parameters``).
    - ``teacher``: the method's EMA teacher (:class:`allspark.methods.weak_to_strong.EMATeacher`) or None; a
      teacher is updated after every step, evaluated beside the model (tag ``ema``) and checkpointed as
      ``model_ema``.
    """

    name = None
    decoders = ()
    labeled_mode = "train_l"
    unlabeled_mode = "train_u"
    cut_labeled = True
    log_keys = {"loss": "Total loss", "loss_x": "Loss x", "loss_u": "Loss u"}
    config_keys = {}
    best_if_equal = False
    find_unused_parameters = False
    teacher = None

    @classmethod
    def check_config(cls, cfg: dict, source: str = "config") -> None:
        """Raise ConfigError where the config cannot train this method (its decoder, its crop)."""
        decoder = cfg["model"].get("decoder") or {}
        dec_type = ALIASES.get(decoder.get("type"), decoder.get("type"))
        if dec_type not in cls.decoders:
            wanted = " or ".join(repr(d) for d in cls.decoders)
            raise ConfigError(f"{source}: method {cls.name!r} trains the {wanted} decoder, but model.decoder.type "
                              f"is {decoder.get('type')!r}")
        patch = encoder_patch_size(cfg["model"])
        if patch and cfg["crop_size"] % patch:
            raise ConfigError(f"{source}: crop_size {cfg['crop_size']} must be a multiple of the encoder's patch size "
                              f"{patch} ({cfg['model']['backbone'].get('type')}), e.g. {cfg['crop_size'] // patch * patch}")

    @classmethod
    def configure_model(cls, cfg: dict, model: nn.Module) -> None:
        """Adjust the freshly built model to the config before it is moved and wrapped (a no-op here)."""

    @classmethod
    def from_config(cls, cfg: dict, model: nn.Module, criterion_l: nn.Module) -> "Method":
        """The method for a checked config, set up for its model (bare, on its device) and labeled loss."""
        raise NotImplementedError

    def setup(self, model: nn.Module) -> "Method":
        """Prepare what depends on the model (an EMA teacher); returns the method."""
        return self

    def build_optimizer(self, model: nn.Module, lr: float, lr_multi: float) -> torch.optim.Optimizer:
        """The release's optimizer: SGD with two groups (see :func:`sgd_two_groups`)."""
        return sgd_two_groups(model, lr, lr_multi)

    def losses(self, net: nn.Module, batch, epoch: int, **kwargs) -> Dict[str, torch.Tensor]:
        """The forward passes of one step on a batch already on the device -> {key: scalar tensor} in
        ``log_keys`` order. ``net`` is the training model (behind DDP / torch.compile)."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, iters: int) -> None:
        """Called after every optimizer step with the bare model and the global iteration: the teacher's
        EMA update."""
        if self.teacher is not None:
            self.teacher.update(model, iters)

    def eval_models(self, model: nn.Module) -> List[Tuple[str, nn.Module]]:
        """[(tag, module)] to evaluate each epoch; the tag '' is the model whose best is ``best.pth``."""
        return [("", model)] + ([("ema", self.teacher.module)] if self.teacher is not None else [])

    def extra_modules(self) -> Dict[str, nn.Module]:
        """{checkpoint entry: module} saved beside ``model`` and restored on resume (``model_ema``)."""
        return {"model_ema": self.teacher.module} if self.teacher is not None else {}
