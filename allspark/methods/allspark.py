"""``allspark``: the AllSpark release's recipe.

The pseudo-labelling loop of ``semi`` with the AllSpark decoder: the training forward gets the pseudo
logits (Channel Semantic Grouping and the S-Mem update) and, from the decoder's ``warmup_epoch`` on,
the labeled half attends over S-Mem instead of the batch's unlabeled channels. The options of ``semi``
(``teacher``, ``strong_aug``, ``conf_thresh``, ``optimizer``, ``ignore_unlabeled_padding``; defaults = the
release) bring in UniMatch V2's EMA teacher, CutMixed strong views, confidence threshold and AdamW (see
:class:`PseudoLabel`); ``memory_sync`` says how S-Mem is fed across processes.
"""
from ..config import ConfigError, Key
from ..models.allspark import ChannelAttention
from .semi import PseudoLabel

__all__ = ["AllSparkMethod"]


class AllSparkMethod(PseudoLabel):
    name = "allspark"
    decoders = ("allspark",)
    # broadcast (the release): DDP's buffer broadcast leaves every process rank 0's memory plus its own last
    # batch; gather: every process enqueues the unlabeled channels of all processes, in rank order
    config_keys = {**PseudoLabel.config_keys, "memory_sync": Key(default="broadcast", allowed=("broadcast", "gather"))}

    def __init__(self, criterion_l, warmup_epoch, **options):
        super().__init__(criterion_l, **options)
        self.warmup_epoch = warmup_epoch

    @classmethod
    def check_config(cls, cfg, source="config"):
        super().check_config(cfg, source)
        image_size = (cfg["model"]["decoder"].get("kwargs") or {}).get("image_size")
        if image_size != cfg["crop_size"]:
            raise ConfigError(f"{source}: model.decoder.kwargs.image_size ({image_size}) must equal crop_size "
                              f"({cfg['crop_size']}): S-Mem is sized for the training crop")

    @classmethod
    def configure_model(cls, cfg, model):
        if cfg["memory_sync"] == "gather":
            for m in model.modules():
                if isinstance(m, ChannelAttention):
                    m.gather_memory = True

    @classmethod
    def from_config(cls, cfg, model, criterion_l):
        return cls(criterion_l, model.decoder.warmup_epoch, **cls.options(cfg)).setup(model)

    def forward_kwargs(self, pseudo_logits, epoch):
        return {"pseudo_logits": pseudo_logits, "use_memory": epoch >= self.warmup_epoch}
