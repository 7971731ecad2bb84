"""The off-by-default speed options of the training step: mixed precision (config key ``amp``) and
``torch.compile`` (config key ``compile``).

``none`` (the release) trains in fp32. ``bf16`` / ``fp16`` run the step's forward passes under
``torch.autocast``; AllSpark's channel-attention scores, their instance norm and softmax stay in fp32
(see ``allspark.models.allspark``). ``fp16`` scales the loss (``torch.amp.GradScaler``) so that small
gradients do not flush to zero; bf16 has fp32's range and needs no scaler. Evaluation runs in fp32.
"""
import contextlib

import torch

from ..compat import amp_grad_scaler, check_compile
from ..config import AMP_MODES

__all__ = ["AMP_DTYPES", "autocast", "grad_scaler", "compile_model", "configure_backends"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # the dtype of each of AMP_MODES
assert tuple(AMP_DTYPES) == AMP_MODES


def autocast(device, amp):
    """The autocast context of ``amp`` on ``device`` (a no-op context for 'none'), without autocast's cache
    of cast weights: torch before 2.10 cached the casts made under ``no_grad`` (a method's pseudo-label
    pass) and handed them, with no gradient history, to the training forward of the same step, so every
    weight that pass had used got no gradient (pytorch/pytorch#158232; seen with 2.1.2 and 2.4.1). Without
    the cache each forward casts its weights again, a small cost next to the activations."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def grad_scaler(device, amp):
    """A GradScaler that is active for fp16 only (a pass-through otherwise)."""
    return amp_grad_scaler(device.type, enabled=amp == "fp16")


def compile_model(net):
    """``torch.compile`` with static shapes: training crops are fixed, and the eval-mode pseudo-label
    pass (B images) and the training forward (2B) then get a graph each instead of one dynamic graph.
    On a torch older than ``compat.COMPILE_FLOOR`` it raises TorchVersionError."""
    check_compile()
    return torch.compile(net, dynamic=False)


def configure_backends(device):
    """The backend switches training runs with (the trainer and the benchmark both call this): cuDNN's
    autotuner on CUDA, as the releases, since training crops have fixed sizes."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
