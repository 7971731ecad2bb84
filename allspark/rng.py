"""The random generators of a process (Python's, NumPy's, torch's on the CPU and on CUDA): seeding them
all, and their states in a form that ``torch.load(..., weights_only=True)`` reads back, so that a run
stopped mid-epoch continues with the states it stopped with."""
import random

import numpy as np
import torch

__all__ = ["seed_all", "get_rng_state", "set_rng_state"]


def seed_all(seed: int) -> None:
    """Seed the generators the augmentations and the model draw from: Python's, NumPy's and torch's."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def get_rng_state():
    """{python, numpy, torch, cuda}: NumPy's Mersenne-Twister key as a tensor, CUDA's per device."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
