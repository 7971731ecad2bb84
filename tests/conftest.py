"""Fixtures every test gets; what tests share otherwise is in helpers.py."""
import logging
import os
from types import SimpleNamespace

import pytest
import torch

import allspark.methods  # noqa: F401  (registers every method's config keys, as the entry points' imports do)

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per pytest worker: no two workers' threads share a core
    torch.set_num_threads(1)

# Test modules whose tests share session fixtures (the reference runs) run on one pytest worker (pytest.ini: -n,
# --dist loadgroup); every other module is a group of its own, so that its module fixtures are built once.
SHARED_WORKER = {"test_training": "reference_runs", "test_cluster": "reference_runs"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group(SHARED_WORKER.get(module, module)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_project_logger():
    """Entry points called in-process configure the 'allspark' logger; give every test a clean one."""
    logger = logging.getLogger("allspark")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


# ---- data and reference runs shared by several test modules ----------------------------------------------

@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """The toy dataset, small: 4 labeled and 16 unlabeled images (8 steps an epoch at batch size 2), 4 val."""
    from helpers import make_toy

    return make_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def long_toy(tmp_path_factory):
    """40 unlabeled images: 20 steps an epoch at batch size 2 in one process, 10 per process with two."""
    from helpers import make_toy

    return make_toy(tmp_path_factory.mktemp("long_toy"), seed=2, num_train=44, num_val=2, min_size=64, max_size=72)


@pytest.fixture(scope="session")
def reference_config(tmp_path_factory, long_toy):
    """Method allspark on long_toy for 2 epochs with a persistent loader worker."""
    from helpers import write_config

    return write_config(tmp_path_factory.mktemp("reference") / "c.yaml", long_toy, num_workers=1)


@pytest.fixture(scope="session")
def single_run(tmp_path_factory, long_toy, reference_config):
    """The reference config trained in one process (this one, one thread, as the subprocesses run):
    SimpleNamespace(save, log)."""
    from helpers import call, train_args

    save = tmp_path_factory.mktemp("single") / "run"
    out = call("train", train_args(reference_config, long_toy, save)[1:])
    assert out.status == 0, out.log[-3000:]
    return SimpleNamespace(save=save, log=out.log)


@pytest.fixture(scope="session")
def torchrun_run(tmp_path_factory, long_toy, reference_config):
    """The reference config trained by two processes under torchrun: SimpleNamespace(save, log)."""
    from helpers import run, torchrun, train_args

    save = tmp_path_factory.mktemp("torchrun") / "run"
    out = run(torchrun(*train_args(reference_config, long_toy, save)))
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return SimpleNamespace(save=save, log=out.stdout + out.stderr)
