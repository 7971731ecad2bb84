"""Models: MiT encoder, AllSpark bottleneck, SegFormer head, and the builder."""
from .allspark import AllSpark, AllSparkDecoder, ChannelAttention, SemanticMemory, channel_semantic_grouping
from .builder import ALIASES, BACKBONES, DECODERS, Segmentor, build_model
from .mit import MIT_PRESETS, MixVisionTransformer
from .segformer_head import SegFormerDecoder, SegFormerHead
from .weights import WeightsError, load_checkpoint, load_pretrained_backbone, read_checkpoint

__all__ = [
    "AllSpark", "AllSparkDecoder", "ChannelAttention", "SemanticMemory", "channel_semantic_grouping",
    "ALIASES", "BACKBONES", "DECODERS", "Segmentor", "build_model", "MIT_PRESETS", "MixVisionTransformer",
    "SegFormerDecoder", "SegFormerHead", "WeightsError", "load_checkpoint", "load_pretrained_backbone", "read_checkpoint",
]
