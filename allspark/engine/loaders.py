"""Data loaders for training and validation under torch.distributed, with reproducible seeds, whose
worker processes end with the run however it ends."""
import atexit
import multiprocessing
import multiprocessing.util  # (registers its exit handler now, before the one this module may add)
import signal
import weakref

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..config import resolve_path
from ..data import SemiDataset

__all__ = ["mask_encoding", "StoppableLoader", "shutdown_loaders", "ShardSampler", "SeededSampler", "build_loaders",
           "build_val_loader", "epoch_seed"]


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``, in order, without padding: each validation
    sample is seen by exactly one process (DistributedSampler would repeat some to even the shards)."""

    def __init__(self, length, rank=0, world_size=1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


# Independent random streams of one process: the model's dropout and the two training loaders (the
# labeled and the unlabeled sample at one position must not share their augmentation draws).
STREAMS = {"model": 0, "labeled": 1, "unlabeled": 2}


def epoch_seed(seed, epoch, rank, stream="model"):
    """A seed of its own for each (run seed, epoch, rank, stream): a resumed epoch draws what it would have drawn."""
    return int(np.random.SeedSequence([seed, epoch, rank, STREAMS[stream]]).generate_state(1)[0])


class SeededSampler(Sampler):
    """A DistributedSampler whose items are (index, seed): each sample's augmentations draw from a seed
    of (run seed, epoch, rank, position), so an epoch draws the same whichever worker loads what, with
    persistent workers, and after a resume."""

    def __init__(self, dataset, env, seed, stream):
        self.sampler = DistributedSampler(dataset, env.world_size, env.rank, shuffle=True, seed=seed)
        self.seed, self.rank, self.stream, self.epoch = seed, env.rank, stream, 0
        self.start = 0  # items of the epoch to skip (a run resumed mid-epoch)

    def set_epoch(self, epoch, start=0):
        """Draw epoch ``epoch``'s order, beginning at its ``start``-th item."""
        self.epoch, self.start = epoch, start
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        base = epoch_seed(self.seed, self.epoch, self.rank, self.stream)
        return ((index, base + pos) for pos, index in enumerate(self.sampler) if pos >= self.start)

    def __len__(self):
        return len(self.sampler) - self.start


class StoppableLoader(DataLoader):
    """A DataLoader whose worker processes its owner stops on the way out (:meth:`shutdown`).

    The workers ignore SLURM's stop signals (:func:`ignore_stop_signals`), and Python's exit handler ends
    daemonic children with SIGTERM and then joins them without a bound: a run that ended with its workers
    alive would wait for them forever. ``shutdown`` uses each live iterator's own shutdown (what its
    ``__del__`` runs; DataLoader has no public close): a None on every worker's index queue, a bounded
    join. Workers that outlive it (one stuck in a sample) are killed at exit (:func:`_kill_daemonic_children`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._live_iterators = weakref.WeakSet()
        if self.num_workers > 0:
            _register_exit_kill()

    def __iter__(self):
        iterator = super().__iter__()
        self._live_iterators.add(iterator)
        return iterator

    def shutdown(self):
        """Stop this loader's worker processes now (a persistent loader starts new ones if iterated again)."""
        for iterator in list(self._live_iterators):
            stop = getattr(iterator, "_shutdown_workers", None)  # absent for a loader without workers
            if stop is not None:
                stop()
        self._live_iterators = weakref.WeakSet()
        self._iterator = None  # the persistent workers' iterator, now stopped


def shutdown_loaders(loaders):
    """:meth:`StoppableLoader.shutdown` for each of ``loaders`` (other loaders are left to their iterators)."""
    for loader in loaders:
        if isinstance(loader, StoppableLoader):
            loader.shutdown()


_exit_kill_registered = False


def _register_exit_kill():
    global _exit_kill_registered
    if not _exit_kill_registered:
        # atexit runs its handlers last-registered first: this one before multiprocessing's (imported above)
        atexit.register(_kill_daemonic_children)
        _exit_kill_registered = True


def _kill_daemonic_children():
    """At exit, SIGKILL the daemonic children still alive (loader workers the run could not stop: they
    ignore the SIGTERM multiprocessing's exit handler would send before joining them). torch's SIGCHLD
    handler is put back to the default first: it would raise on workers killed by a signal."""
    alive = [p for p in multiprocessing.active_children() if p.daemon]
    if alive:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for p in alive:
            p.kill()
        for p in alive:
            p.join(5)


def _loader(dataset, batch_size, sampler, cfg, env, drop_last):
    """A DataLoader with the config's worker settings. Persistent workers (the default) are forked
    once: forking anew every epoch from a process with live threads (gloo, queue feeders) can deadlock
    the child in CPython's after-fork clean-up. Pinned memory only where there is a GPU to copy to.
    A generator of its own, so that starting workers does not draw from the global one (a resumed run
    starts them in another epoch than an uninterrupted one)."""
    workers = cfg["num_workers"]
    extra = dict(persistent_workers=cfg["persistent_workers"], prefetch_factor=cfg["prefetch_factor"]) if workers else {}
    return StoppableLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                           pin_memory=cfg["pin_memory"] and env.device.type == "cuda", drop_last=drop_last,
                           generator=torch.Generator().manual_seed(0), worker_init_fn=ignore_stop_signals, **extra)


def ignore_stop_signals(worker_id):
    """Loader workers ignore SLURM's stop signals (sent to every process of a job step): the training
    process handles them, finishes its step and checkpoints, and its workers must live until then. Their
    process stops them itself on the way out (:class:`StoppableLoader`)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def mask_encoding(cfg):
    """The dataset keywords that say how the config's masks are stored."""
    return dict(num_classes=cfg["nclass"], ignore_index=cfg["ignore_index"], reduce_zero_label=cfg["reduce_zero_label"])


def build_loaders(cfg, env, labeled_list, unlabeled_list, seed, labeled_mode="train_l", unlabeled_mode="train_u",
                  cut_labeled=True, unlabeled_labels=False):
    """Training and validation loaders: {'l': labeled, 'u': unlabeled, 'val': validation}, with the
    dataset modes a method asks for (``unlabeled_mode`` None: no unlabeled loader, as for 'sup').
    The labeled list is tiled to the unlabeled list's length, so one epoch is one pass over the
    unlabeled list (over the labeled list without one); a longer labeled list is cut to that length
    (the AllSpark release) or, with ``cut_labeled`` False, kept whole (UniMatch V2's release). With
    ``unlabeled_labels`` the unlabeled batches carry the true labels when the list's masks are all there."""
    root, crop = resolve_path(cfg["data_root"]), cfg["crop_size"]
    loaders = {}
    nsample = None
    if unlabeled_mode is not None:
        trainset_u = SemiDataset(cfg["dataset"], root, unlabeled_mode, crop, unlabeled_list, unlabeled_labels=unlabeled_labels,
                                 **mask_encoding(cfg))
        nsample = len(trainset_u)
        sampler_u = SeededSampler(trainset_u, env, seed, "unlabeled")
        loaders["u"] = _loader(trainset_u, cfg["batch_size"], sampler_u, cfg, env, drop_last=True)
    trainset_l = SemiDataset(cfg["dataset"], root, labeled_mode, crop, labeled_list, nsample, cut_longer=cut_labeled,
                             **mask_encoding(cfg))
    sampler_l = SeededSampler(trainset_l, env, seed, "labeled")
    loaders["l"] = _loader(trainset_l, cfg["batch_size"], sampler_l, cfg, env, drop_last=True)
    loaders["val"] = build_val_loader(cfg, env)
    return loaders


def build_val_loader(cfg, env):
    """The config's validation list, one image a batch, sharded over the processes without repeats."""
    valset = SemiDataset(cfg["dataset"], resolve_path(cfg["data_root"]), "val", id_path=resolve_path(cfg["val_id_path"]),
                         **mask_encoding(cfg))
    return _loader(valset, 1, ShardSampler(len(valset), env.rank, env.world_size), cfg, env, drop_last=False)
