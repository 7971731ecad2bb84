"""The torch APIs this project uses whose signature or place changed between the versions requirements.txt
admits, detected once here rather than by version numbers."""
import torch

__all__ = ["autocast_enabled", "amp_grad_scaler", "GLOO_DESTRUCTOR_HOLDS_GIL"]

# torch before 2.8 destroys a process group with the GIL held and, for gloo, joins its worker threads there; a
# worker still releasing the tensors of a finished collective needs the GIL, so both can wait forever
# (pytorch/pytorch#154976 released the GIL from 2.8 on). Seen here as two-process gloo runs on torch 2.4.1
# hanging after their last checkpoint, at random.
GLOO_DESTRUCTOR_HOLDS_GIL = torch.__version__ < "2.8"


def autocast_enabled(device_type):
    """Whether autocast is on for ``device_type`` ('cpu', 'cuda', ...). ``torch.is_autocast_enabled`` takes
    the device type from torch 2.4; before, it answered for CUDA only and the CPU had its own function."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


def amp_grad_scaler(device_type, enabled):
    """A loss scaler for ``device_type``: ``torch.amp.GradScaler`` (torch >= 2.3), else the CUDA one, which
    is also the pass-through a disabled scaler needs on any device."""
    scaler_cls = getattr(torch.amp, "GradScaler", None)
    if scaler_cls is not None:
        return scaler_cls(device_type, enabled=enabled)
    if enabled and device_type != "cuda":
        raise RuntimeError(f"amp fp16 on {device_type} needs torch >= 2.3 (torch.amp.GradScaler); this is torch "
                           f"{torch.__version__}")
    return torch.cuda.amp.GradScaler(enabled=enabled)
