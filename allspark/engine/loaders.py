"""Data loaders for training and validation under torch.distributed, with reproducible seeds."""
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..config import resolve_path
from ..data import SemiDataset

__all__ = ["ShardSampler", "build_loaders", "build_val_loader", "seed_all", "epoch_seed"]


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``, in order, without padding: each validation
    sample is seen by exactly one process (DistributedSampler would repeat some to even the shards)."""

    def __init__(self, length, rank=0, world_size=1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def seed_all(seed):
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def epoch_seed(seed, epoch, rank):
    """A seed of its own for each (run seed, epoch, rank): a resumed epoch draws what it would have drawn."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _loader(dataset, batch_size, sampler, cfg, env, drop_last):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg["num_workers"],
                      pin_memory=env.device.type == "cuda", drop_last=drop_last, generator=torch.Generator())


def build_loaders(cfg, env, labeled_list, unlabeled_list, seed):
    """Loaders of the method: {'l': labeled, 'u': unlabeled (not for 'sup'), 'val': validation}.
    The labeled list is tiled to the unlabeled list's length, so one epoch is one pass over the
    unlabeled list (over the labeled list for 'sup')."""
    root, crop = resolve_path(cfg["data_root"]), cfg["crop_size"]
    loaders = {}
    nsample = None
    if cfg["method"] != "sup":
        trainset_u = SemiDataset(cfg["dataset"], root, "train_u", crop, unlabeled_list, num_classes=cfg["nclass"])
        nsample = len(trainset_u)
        loaders["u"] = _loader(trainset_u, cfg["batch_size"], DistributedSampler(
            trainset_u, env.world_size, env.rank, shuffle=True, seed=seed), cfg, env, drop_last=True)
    trainset_l = SemiDataset(cfg["dataset"], root, "train_l", crop, labeled_list, nsample, num_classes=cfg["nclass"])
    loaders["l"] = _loader(trainset_l, cfg["batch_size"], DistributedSampler(
        trainset_l, env.world_size, env.rank, shuffle=True, seed=seed), cfg, env, drop_last=True)
    loaders["val"] = build_val_loader(cfg, env)
    return loaders


def build_val_loader(cfg, env):
    """The config's validation list, one image a batch, sharded over the processes without repeats."""
    valset = SemiDataset(cfg["dataset"], resolve_path(cfg["data_root"]), "val", id_path=resolve_path(cfg["val_id_path"]),
                         num_classes=cfg["nclass"])
    return _loader(valset, 1, ShardSampler(len(valset), env.rank, env.world_size), cfg, env, drop_last=False)
