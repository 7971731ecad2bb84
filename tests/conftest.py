import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
# The official release's reference tensors live beside the project (not in it); users who clone
# the project lack them, so the tests that need them skip.
GOLDEN = Path(os.environ.get("ALLSPARK_GOLDEN", ROOT.parent / "shared" / "golden"))


def golden_file(name):
    path = GOLDEN / name
    if not path.is_file():
        pytest.skip(f"golden reference {path} not present")
    return path


def tiny_model_cfg(num_class=5, image_size=65, decoder="allspark", dims=(16, 32, 40, 64), depths=(1, 1, 1, 1),
                   num_heads=2, embedding_dim=32):
    """A model section as small as the golden case: builds and runs in milliseconds."""
    return {
        "backbone": {"type": "mit", "kwargs": {"embed_dims": list(dims), "num_heads": [1, 2, 5, 8],
                                               "depths": list(depths), "drop_path_rate": 0.0}},
        "decoder": {"type": decoder, "kwargs": {"num_heads": num_heads, "num_class": num_class,
                                                "in_planes": list(dims), "image_size": image_size,
                                                "warmup_epoch": 1, "embedding_dim": embedding_dim}},
    }


def zero_dropout(model):
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.p = 0.0
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_project_logger():
    """Entry points called in-process configure the 'allspark' logger; give every test a clean one."""
    import logging

    logger = logging.getLogger("allspark")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
