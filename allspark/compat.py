"""The torch versions this project runs on, and the torch APIs it uses whose signature or place changed
between them, detected once here."""
import torch

__all__ = ["TORCH_FLOOR", "COMPILE_FLOOR", "TorchVersionError", "torch_older_than", "check_torch_version",
           "check_compile", "autocast_enabled", "amp_grad_scaler", "AUTOCAST_QUERY_TAKES_DEVICE",
           "GLOO_DESTRUCTOR_HOLDS_GIL"]

# The oldest torch the tests pass on (requirements.txt). torch 2.1's CPU gelu backward returns wrong values
# (NaN) when its incoming gradient is channels-last-strided and its input contiguous, which MiT's Mix-FFN and
# AllSpark's map_in produce: its training losses turn NaN (fixed in 2.2).
TORCH_FLOOR = "2.2"
# The oldest torch whose compiled training step matches the eager one (tests/test_speed_options.py): the
# compilers of 2.2.2 and 2.3.1 write S-Mem contents on the CPU that differ from eager mode's far more than
# rounding noise in the weights moves them; from 2.4.1 on the two agree to rounding.
COMPILE_FLOOR = "2.4"


class TorchVersionError(RuntimeError):
    """The installed torch cannot run what was asked: older than the floor, or without an API a config needs."""


def torch_older_than(floor, version=None):
    """Whether ``version`` (default: the installed torch's) is older than ``floor`` ('2.2'); pre-releases of
    the floor (an NGC container's 2.2.0a0+...) count as the floor."""
    return torch.torch_version.TorchVersion(torch.__version__ if version is None else version) < f"{floor}.0a0"


def check_torch_version(version=None):
    """Raise TorchVersionError when ``version`` (default: the installed torch's) is older than TORCH_FLOOR."""
    version = torch.__version__ if version is None else version
    if torch_older_than(TORCH_FLOOR, version):
        raise TorchVersionError(f"torch {version} is older than {TORCH_FLOOR}, the oldest this project runs on "
                                f"(requirements.txt): its CPU gelu backward gives NaN for channels-last "
                                f"gradients; install torch >= {TORCH_FLOOR} with its torchvision")


def check_compile(version=None):
    """Raise TorchVersionError when ``version`` (default: the installed torch's) is older than COMPILE_FLOOR."""
    version = torch.__version__ if version is None else version
    if torch_older_than(COMPILE_FLOOR, version):
        raise TorchVersionError(f"compile: true needs torch >= {COMPILE_FLOOR}; this is torch {version}, whose "
                                f"compiled AllSpark step drifts from the eager one (S-Mem contents 2e-3 off): "
                                f"set compile: false or install a newer torch")


# torch before 2.8 destroys a process group with the GIL held and, for gloo, joins its worker threads there; a
# worker still releasing the tensors of a finished collective needs the GIL, so both can wait forever
# (pytorch/pytorch#154976 released the GIL from 2.8 on). On torch 2.4.1 it shows as two-process gloo runs
# that hang after their last checkpoint, at random.
GLOO_DESTRUCTOR_HOLDS_GIL = torch_older_than("2.8")


def _autocast_query_takes_device():
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return False
    return True


# ``torch.is_autocast_enabled`` takes the device type from torch 2.4; before, it answered for CUDA only and
# the CPU had its own function. Decided once at import: torch.compile then sees a constant (torch 2.2's
# dynamo turns the TypeError of a call-time try into an internal error).
AUTOCAST_QUERY_TAKES_DEVICE = _autocast_query_takes_device()


def autocast_enabled(device_type):
    """Whether autocast is on for ``device_type`` ('cpu', 'cuda', ...), on any torch from the floor on."""
    if AUTOCAST_QUERY_TAKES_DEVICE:
        return torch.is_autocast_enabled(device_type)
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled()
    return device_type == "cuda" and torch.is_autocast_enabled()


def amp_grad_scaler(device_type, enabled):
    """A loss scaler for ``device_type``: ``torch.amp.GradScaler`` (torch >= 2.3), else the CUDA one, which
    is also the pass-through a disabled scaler needs on any device. An enabled scaler off CUDA on a torch
    without ``torch.amp.GradScaler`` raises TorchVersionError."""
    scaler_cls = getattr(torch.amp, "GradScaler", None)
    if scaler_cls is not None:
        return scaler_cls(device_type, enabled=enabled)
    if enabled and device_type != "cuda":
        raise TorchVersionError(f"amp: fp16 on {device_type} needs torch >= 2.3 (torch.amp.GradScaler); this is "
                                f"torch {torch.__version__}: use amp: bf16 or none, or a newer torch")
    return torch.cuda.amp.GradScaler(enabled=enabled)
