"""The torch-version shims (allspark/compat.py) through their fallbacks, as an older torch would drive them:
every AllSpark forward asks whether autocast is on, and the trainer builds a loss scaler."""
import pytest
import torch

from allspark import compat
from allspark.engine.speed import grad_scaler
from allspark.models import attention as A
from allspark.models.allspark import _attention_weights


class TorchBefore24:
    """torch as allspark.compat sees it with a torch older than 2.4: ``is_autocast_enabled`` takes no argument
    and answers for CUDA only; the CPU has ``is_autocast_cpu_enabled`` (its calls are counted). Everything
    else is today's torch (autocast itself is not patched: entering it uses today's API)."""

    def __init__(self):
        self.cpu_calls = 0

    def __getattr__(self, name):
        return getattr(torch, name)

    def is_autocast_enabled(self, *args):
        if args:
            raise TypeError("is_autocast_enabled() takes 0 positional arguments but 1 was given")
        return torch.is_autocast_enabled("cuda")

    def is_autocast_cpu_enabled(self):
        self.cpu_calls += 1
        return torch.is_autocast_enabled("cpu")


def test_autocast_detected_without_the_device_argument(monkeypatch):
    old_torch = TorchBefore24()
    monkeypatch.setattr(compat, "torch", old_torch)
    q, k, v = torch.randn(1, 2, 8, 5), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 8, 5)
    exact, fused = _attention_weights(q, k), A.fused_attention(q, k, v)
    assert not compat.autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compat.autocast_enabled("cpu") and not compat.autocast_enabled("cuda")
        weights, out = _attention_weights(q, k), A.fused_attention(q, k, v)
    assert old_torch.cpu_calls >= 5, "the CPU's own function answered at both call sites"
    assert weights.dtype == out.dtype == torch.float32  # the fp32 branches of both call sites ran
    assert torch.equal(weights, exact) and torch.equal(out, fused)


@pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.GradScaler.*is deprecated:FutureWarning")
def test_grad_scaler_before_torch_2_3(monkeypatch):
    monkeypatch.delattr(torch.amp, "GradScaler")
    scaler = grad_scaler(torch.device("cpu"), "none")
    assert not scaler.is_enabled()
    with pytest.raises(RuntimeError, match=r"torch >= 2\.3"):
        grad_scaler(torch.device("cpu"), "fp16")
