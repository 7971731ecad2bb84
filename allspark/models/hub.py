"""Encoder weights in the Hugging Face hub's layout (``facebook/dinov3-*``, ``facebook/dinov2-*``,
``nvidia/mit-b0`` .. ``nvidia/mit-b5``: transformers' ``DINOv3ViTModel``, ``Dinov2Model``, ``SegformerModel``
and their classification wrappers) renamed to the official releases' names, which the encoders here carry.

Each converter maps every key it knows and leaves the others under their own names, so that the loader's
report lists them; separate q / k / v projections are concatenated into the release's fused ``qkv``."""
import re
from typing import Dict

import torch

__all__ = ["is_hub_layout", "from_hub", "HUB_PREFIXES"]

# the wrappers transformers saves an encoder under (classification / segmentation models)
HUB_PREFIXES = ("segformer.", "dinov2.", "dinov3.", "model.", "backbone.")
_HEADS = ("classifier.", "decode_head.", "head.")  # task heads beside the encoder: not the encoder's


def is_hub_layout(state: Dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses the hub's names (an ``embeddings.*`` or ``encoder.*`` tree)."""
    keys = [_unwrap(k) for k in state]
    return any(k.startswith(("embeddings.", "encoder.patch_embeddings.", "encoder.block.")) for k in keys)


def _unwrap(key):
    for prefix in HUB_PREFIXES:
        if key.startswith(prefix) and not key.startswith("model.layer."):
            return key[len(prefix):]
    return key


def _cat_qkv(state, out, prefix, target, names):
    """``target.weight`` / ``.bias`` as the concatenation of the three projections ``names`` under ``prefix``
    (a missing bias counts as zeros: DINOv3's k projection has none)."""
    weights = [state.pop(f"{prefix}{n}.weight") for n in names]
    out[f"{target}.weight"] = torch.cat(weights)
    biases = [state.pop(f"{prefix}{n}.bias", None) for n in names]
    if any(b is not None for b in biases):
        out[f"{target}.bias"] = torch.cat([b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype)
                                           for b, w in zip(biases, weights)])


def _dinov3(state):
    out = {}
    for key in [k for k in state if k.startswith("embeddings.")]:
        name = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "storage_tokens",
                "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
                "embeddings.patch_embeddings.bias": "patch_embed.proj.bias"}.get(key)
        if key == "embeddings.mask_token":
            out["mask_token"] = state.pop(key).reshape(1, -1)
        elif name:
            out[name] = state.pop(key)
    layers = sorted({int(m.group(1)) for k in state for m in [re.match(r"(?:model\.)?layer\.(\d+)\.", k)] if m})
    for i in layers:
        p = f"model.layer.{i}." if f"model.layer.{i}.norm1.weight" in state else f"layer.{i}."
        b = f"blocks.{i}."
        _cat_qkv(state, out, f"{p}attention.", f"{b}attn.qkv", ("q_proj", "k_proj", "v_proj"))
        renames = {"norm1": "norm1", "norm2": "norm2", "attention.o_proj": "attn.proj", "mlp.up_proj": "mlp.fc1",
                   "mlp.down_proj": "mlp.fc2", "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}
        if f"{p}mlp.gate_proj.weight" in state:  # SwiGLU: w3(silu(w1 x) * w2 x)
            renames.update({"mlp.gate_proj": "mlp.w1", "mlp.up_proj": "mlp.w2", "mlp.down_proj": "mlp.w3"})
        _rename(state, out, p, b, renames)
    _rename(state, out, "", "", {"norm": "norm"})
    return out


def _dinov2(state):
    out = {}
    renames = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
               "embeddings.position_embeddings": "pos_embed"}
    for key, name in renames.items():
        if key in state:
            out[name] = state.pop(key)
    _rename(state, out, "embeddings.patch_embeddings.", "patch_embed.", {"projection": "proj"})
    layers = sorted({int(m.group(1)) for k in state for m in [re.match(r"encoder\.layer\.(\d+)\.", k)] if m})
    for i in layers:
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        _cat_qkv(state, out, f"{p}attention.attention.", f"{b}attn.qkv", ("query", "key", "value"))
        _rename(state, out, p, b, {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
                                   "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.weights_in": "mlp.w12",
                                   "mlp.weights_out": "mlp.w3", "layer_scale1.lambda1": "ls1.gamma",
                                   "layer_scale2.lambda1": "ls2.gamma"})
    _rename(state, out, "", "", {"layernorm": "norm"})
    return out


def _mit(state):
    out = {}
    stages = sorted({int(m.group(1)) for k in state for m in [re.match(r"encoder\.patch_embeddings\.(\d+)\.", k)] if m})
    for i in stages:
        _rename(state, out, f"encoder.patch_embeddings.{i}.", f"patch_embed{i + 1}.",
                {"proj": "proj", "layer_norm": "norm"})
        _rename(state, out, "encoder.", "", {f"layer_norm.{i}": f"norm{i + 1}"})
        blocks = sorted({int(m.group(1)) for k in state
                         for m in [re.match(rf"encoder\.block\.{i}\.(\d+)\.", k)] if m})
        for j in blocks:
            p, b = f"encoder.block.{i}.{j}.", f"block{i + 1}.{j}."
            _rename(state, out, p, b, {"attention.self.query": "attn.q", "attention.self.sr": "attn.sr",
                                       "attention.self.layer_norm": "attn.norm", "attention.output.dense": "attn.proj",
                                       "layer_norm_1": "norm1", "layer_norm_2": "norm2", "mlp.dense1": "mlp.fc1",
                                       "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.dense2": "mlp.fc2"})
            _cat_qkv(state, out, f"{p}attention.self.", f"{b}attn.kv", ("key", "value"))
    return out


def _rename(state, out, src, dst, names):
    """Move ``src + old`` (and ``src + old + '.' + rest``) to ``dst + new`` (+ the same rest) for every (old, new)
    of ``names``."""
    for old, new in names.items():
        for key in [k for k in state if k == f"{src}{old}" or k.startswith(f"{src}{old}.")]:
            out[f"{dst}{new}{key[len(src) + len(old):]}"] = state.pop(key)


def from_hub(state: Dict[str, torch.Tensor], family: str) -> Dict[str, torch.Tensor]:
    """``state`` in the hub's layout for the encoder ``family`` ('dinov3', 'dinov2' or 'mit') renamed to the
    release's names; the task heads beside the encoder are dropped, keys the mapping does not know are kept
    under their own names (the loader reports them)."""
    state = {_unwrap(k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_HEADS)}
    out = {"dinov3": _dinov3, "dinov2": _dinov2, "mit": _mit}[family](state)
    return {**out, **state}
