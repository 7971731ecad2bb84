"""The torch floor and the torch-version shims (allspark/compat.py) through their fallbacks, as an older torch
would drive them: every AllSpark forward asks whether autocast is on, and the trainer builds a loss scaler.
On a torch older than 2.4 / 2.3 the fallbacks run for real in the rest of the suite too."""
import logging
import re

import pytest
import torch

from allspark import compat
from allspark.engine.entry import run_main
from allspark.engine.speed import grad_scaler
from allspark.models import attention as A
from allspark.models.allspark import attention_weights


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


def test_the_autocast_query_is_detected_as_torch_documents_it():
    assert compat.AUTOCAST_QUERY_TAKES_DEVICE == (torch.__version__ >= "2.4")


@pytest.mark.skipif(not compat.AUTOCAST_QUERY_TAKES_DEVICE, reason="this torch is older than 2.4: every AllSpark "
                    "forward of the suite runs the fallback itself")
def test_autocast_detected_without_the_device_argument(monkeypatch):
    old_torch = TorchBefore24()
    monkeypatch.setattr(compat, "torch", old_torch)
    monkeypatch.setattr(compat, "AUTOCAST_QUERY_TAKES_DEVICE", False)
    q, k, v = torch.randn(1, 2, 8, 5), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 8, 5)
    exact, fused = attention_weights(q, k), A.fused_attention(q, k, v)
    assert not compat.autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compat.autocast_enabled("cpu") and not compat.autocast_enabled("cuda")
        weights, out = attention_weights(q, k), A.fused_attention(q, k, v)
    assert old_torch.cpu_calls >= 5, "the CPU's own function answered at both call sites"
    assert weights.dtype == out.dtype == torch.float32  # the fp32 branches of both call sites ran
    assert torch.equal(weights, exact) and torch.equal(out, fused)


@pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.GradScaler.*is deprecated:FutureWarning")
def test_grad_scaler_before_torch_2_3(monkeypatch):
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)  # torch 2.2 has none
    scaler = grad_scaler(torch.device("cpu"), "none")
    assert not scaler.is_enabled()
    with pytest.raises(compat.TorchVersionError, match=r"amp: fp16 on cpu needs torch >= 2\.3"):
        grad_scaler(torch.device("cpu"), "fp16")


@pytest.mark.parametrize("version, runs", [("2.1.2+cu121", False), ("2.2.0a0+81ea7a4", True), ("2.2.2", True),
                                           ("2.14.1+cu130", True), ("1.13.1", False)])
def test_the_torch_floor(version, runs):
    if runs:
        compat.check_torch_version(version)
    else:
        with pytest.raises(compat.TorchVersionError, match=re.escape(f"torch {version} is older than 2.2")):
            compat.check_torch_version(version)


@pytest.mark.parametrize("version, runs", [("2.3.1", False), ("2.4.0a0+3bcc3cd", True), ("2.4.1", True)])
def test_the_compile_floor(version, runs):
    if runs:
        compat.check_compile(version)
    else:
        with pytest.raises(compat.TorchVersionError, match=re.escape(f"compile: true needs torch >= 2.4; this is "
                                                                     f"torch {version}")):
            compat.check_compile(version)


def test_entry_points_stop_on_a_torch_below_the_floor(monkeypatch, caplog):
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.1.2"))
    called = []
    with pytest.raises(SystemExit) as stop, caplog.at_level(logging.ERROR, logger="allspark"):
        run_main(called.append, "args")
    assert stop.value.code == 2 and not called
    assert "error: torch 2.1.2 is older than 2.2, the oldest this project runs on" in caplog.text
