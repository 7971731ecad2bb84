"""The training loop, shared by every method (``allspark.methods``): what differs between methods
(loaders' views, optimizer, losses, EMA teacher, evaluated models) is the method's.

Per iteration: the method's losses under the config's autocast, backward, the optimizer step, the poly
lr (power 0.9, over epochs x iterations per epoch) written after the step as the releases do, then the
method's ``after_step`` (the EMA teacher's update, where the method has one). Every epoch is evaluated; ``latest.pth`` / ``best.pth``
are written atomically and a run started again on the same save path resumes from ``latest.pth``.
"""
import logging
import math
import time
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError, load_training_config, resolve_path
from ..data import DataError, class_names
from ..data.check import preflight
from ..files import WriteError
from ..methods import PSEUDO_ACCURACY, get_method, to_device
from ..models import build_model
from ..rng import get_rng_state, seed_all, set_rng_state
from .checkpoint import checkpoint_tensors, first_non_finite, release_state_dict, resume_latest, save_checkpoint
from .cluster import EXIT_PREEMPTED, RunLock, RunLockedError, StopRequest, parse_duration, provenance, watch_parent
from .dist import DistEnv, any_rank, broadcast_buffers, cleanup, gather_objects, setup_distributed
from .evaluate import evaluate
from .loaders import build_loaders, epoch_seed, shutdown_loaders
from .logger import AverageMeter, TensorBoard, format_iou_table, setup_logger
from .losses import build_criterion
from .records import append_epoch_record, write_run_record
from .speed import autocast, compile_model, configure_backends, grad_scaler

__all__ = ["Trainer", "main", "poly_lr", "set_lr", "scaled_lr", "make_save_path"]

logger = logging.getLogger("allspark")


def poly_lr(base_lr: float, iters: int, total_iters: int, power: float = 0.9) -> float:
    return base_lr * (1 - iters / total_iters) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float, lr_multi: float) -> None:
    """Group 0 (the backbone) at ``lr``, group 1 (the rest) at ``lr x lr_multi``."""
    optimizer.param_groups[0]["lr"] = lr
    optimizer.param_groups[1]["lr"] = lr * lr_multi


def scaled_lr(cfg: dict, world_size: int) -> float:
    """The base lr of a run of ``world_size`` processes: the config's ``lr``, times (batch_size x world_size)
    / ``reference_batch`` with ``lr_scaling: linear`` (mmsegmentation's auto_scale_lr rule)."""
    if cfg["lr_scaling"] == "linear":
        return cfg["lr"] * cfg["batch_size"] * world_size / cfg["reference_batch"]
    return cfg["lr"]


def describe_batch(cfg: dict, world_size: int, lr: float, halves: int) -> str:
    """The log line on the run's total batch against the recipe's and the lrs used."""
    total = cfg["batch_size"] * world_size
    batch = f"{total} labeled" + (f" + {total} unlabeled" if halves == 2 else "")
    line = f"batch: {batch} ({cfg['batch_size']} per process x {world_size})"
    reference = cfg["reference_batch"]
    if reference is None:
        line += "; the config names no reference_batch"
    else:
        line += f"; the recipe's: {reference}" + (" (the same)" if reference == total else f" ({total / reference:g}x)")
    scaling = "" if cfg["lr_scaling"] == "none" else f" (x {total}/{reference}, lr_scaling: linear)"
    line += f"; lr {lr:g}{scaling}, head lr {lr * cfg['lr_multi']:g}"
    if cfg["lr_scaling"] == "none" and reference not in (None, total):
        line += "; lr_scaling: linear would scale the lrs with the batch"
    return line


def make_save_path(path) -> Path:
    """Create the run's folder; a file in its place or a folder that cannot be made is a clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--save-path {path} is a file, not a folder: name a folder for the checkpoints and logs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot make the save path {path}: {exc.strerror or exc}") from None
    return path


def _take_lock(save_path: Path, env: DistEnv) -> Optional[RunLock]:
    """Rank 0 takes the save path's lock; every process stops when it cannot (RunLockedError). With the
    lock held, temporary files left by a run killed while writing are removed."""
    lock, error = None, None
    if env.is_main:
        try:
            lock = RunLock(save_path).acquire()
        except RunLockedError as exc:
            error = exc
    if any_rank(error is not None, env.device):
        raise error or RunLockedError(f"rank 0 could not lock {save_path}: another run is using it")
    if env.is_main:
        for stale in sorted(Path(save_path).glob(".*.pth.*.tmp")):
            stale.unlink(missing_ok=True)
            logger.info(f"removed {stale.name}: a checkpoint a killed run was writing (the previous file is whole)")
    return lock


class Trainer:
    """One training run of a checked config (:func:`allspark.config.load_training_config`).

    The constructor builds, in this order: the data check of the lists, the save path and its lock, the
    model (seeded with ``seed``, wrapped for DDP / compile) and the method, the loaders, the optimisation
    (optimizer, loss scaler) and the logging (TensorBoard, provenance). ``model`` and ``loaders`` (a dict
    {'l': labeled, 'u': unlabeled, 'val': validation}) replace the built ones, and without ``save_path``
    nothing is written: tests, the benchmark and the release-recipe replay run the real steps this way.
    For :meth:`step` alone the loaders only give the epoch's length (lists will do); :meth:`fit` needs
    loaders with the trainer's samplers (``build_loaders``). ``stop`` (a :class:`StopRequest`) says when to
    stop with a checkpoint.

    :meth:`fit` runs (or resumes) the whole schedule; :meth:`step` is one iteration; :meth:`close` stops the
    loaders' workers, closes the TensorBoard writer and releases the save path's lock.
    """

    def __init__(self, cfg: dict, env: Optional[DistEnv] = None, *, save_path=None, labeled_list=None,
                 unlabeled_list=None, seed: int = 0, stop: Optional[StopRequest] = None,
                 model: Optional[nn.Module] = None, loaders: Optional[Dict] = None, config_path: str = "the config"):
        self.cfg, self.env, self.seed = cfg, env or DistEnv(), seed
        self.stop = stop or StopRequest()
        self.method_cls = get_method(cfg["method"])
        if loaders is None:
            self._check_data(labeled_list, unlabeled_list, config_path)
        self.save_path, self.lock = self._claim_save_path(save_path)
        self.loaders, self.tb = {}, None
        try:
            seed_all(seed)
            self.model, self.net = self._build_model(model)
            self.method = self.method_cls.from_config(cfg, self.model, build_criterion(cfg["criterion"]))
            self.loaders = loaders if loaders is not None else self._build_loaders(labeled_list, unlabeled_list)
            self.lr = scaled_lr(cfg, self.env.world_size)
            logger.info(describe_batch(cfg, self.env.world_size, self.lr, 1 if self.method_cls.unlabeled_mode is None else 2))
            self.iters_per_epoch = len(self.loaders["u" if "u" in self.loaders else "l"])
            self.total_iters = self.iters_per_epoch * cfg["epochs"]
            self.log_keys = self._log_keys()
            self.optimizer, self.scaler = self._build_optimisation()
            self.tb, self.provenance = self._build_logging()
            if self.env.is_main and self.save_path is not None:
                write_run_record(self.save_path, cfg, str(config_path) if Path(str(config_path)).is_file() else None,
                                 labeled_list, unlabeled_list, seed, self.env.world_size, self.lr)
        except BaseException:
            self.close()  # (the lock, and loaders already built)
            raise
        self.best = {}  # eval tag -> (best mIoU, its epoch)
        self.epoch_losses: Dict[str, float] = {}  # the last epoch's mean of each logged value (this process's steps)
        self.ious: Dict[str, list] = {}  # eval tag -> the last evaluation's per-class IoU

    # ---- builders ---------------------------------------------------------------------------------------

    def _check_data(self, labeled_list, unlabeled_list, config_path):
        """Every file the lists name is there (before anything is written)."""
        needs_unlabeled = self.method_cls.unlabeled_mode is not None
        if needs_unlabeled and not unlabeled_list:
            raise ConfigError(f"method {self.cfg['method']!r} needs --unlabeled-id-path")
        lists = [(labeled_list, True), (resolve_path(self.cfg["val_id_path"]), True)]
        if needs_unlabeled:
            lists.insert(1, (unlabeled_list, False))  # unlabeled masks are optional
        checked = preflight(resolve_path(self.cfg["data_root"]), lists,
                            hint=f" (data_root of {config_path}; see docs/datasets.md)")
        logger.info(f"data: the {checked} files the lists name are there")

    def _claim_save_path(self, save_path):
        """(the save path, made; rank 0's lock on it), or (None, None) for a run that writes nothing."""
        if save_path is None:
            return None, None
        save_path = make_save_path(save_path)
        return save_path, _take_lock(save_path, self.env)

    def _build_model(self, model):
        """(the bare model on the device, the training net: behind SyncBatchNorm / DDP / torch.compile)."""
        cfg, env = self.cfg, self.env
        if model is None:
            model = build_model(cfg["model"])
        if cfg["lock_backbone"]:
            model.backbone.requires_grad_(False)
            logger.info("lock_backbone: the encoder is frozen")
        self.method_cls.configure_model(cfg, model)
        if cfg["activation_checkpointing"]:
            if not hasattr(model.backbone, "set_grad_checkpointing"):
                raise ConfigError(f"activation_checkpointing: the encoder {type(model.backbone).__name__} cannot "
                                  "recompute its blocks")
            model.backbone.set_grad_checkpointing(True)
            logger.info("activation checkpointing: the encoder's blocks are recomputed in backward")
        model.to(env.device)
        configure_backends(env.device)
        if env.world_size > 1 and env.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            logger.info("SyncBatchNorm: on (CUDA)")
        elif env.world_size > 1:
            logger.info("SyncBatchNorm: off on CPU (DDP refuses it on CPU modules): plain BatchNorm, statistics per "
                        "process, rank 0's kept by DDP's buffer broadcast")
        net = model
        if env.world_size > 1:
            # DDP's default: rank 0's buffers (BatchNorm statistics, S-Mem) are broadcast at every forward.
            # Parameters that never get a gradient (DINOv2's mask_token, the DPT head's first unit of its deepest
            # fusion block) make DDP wait for them unless it looks for unused parameters, as the releases let it.
            unused = self.method_cls.find_unused_parameters or any(getattr(m, "has_unused_parameters", False)
                                                                   for m in model.modules())
            net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                          find_unused_parameters=unused)
        if cfg["compile"]:
            net = compile_model(net)
            logger.info("torch.compile: on (the first steps of each mode compile)")
        if cfg["amp"] != "none":
            logger.info(f"mixed precision: {cfg['amp']} autocast in the training step"
                        f"{' with loss scaling' if cfg['amp'] == 'fp16' else ''}; evaluation in fp32")
        logger.info(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
        return model, net

    def _build_loaders(self, labeled_list, unlabeled_list):
        loaders = build_loaders(self.cfg, self.env, labeled_list, unlabeled_list, self.seed, self.method.labeled_mode,
                                self.method.unlabeled_mode, self.method.cut_labeled, self.cfg["pseudo_label_accuracy"])
        key = "u" if "u" in loaders else "l"
        if len(loaders[key]) == 0:
            raise DataError(f"the {'unlabeled' if key == 'u' else 'labeled'} list has {len(loaders[key].dataset)} "
                            f"images: fewer than batch_size {self.cfg['batch_size']} x {self.env.world_size} processes")
        return loaders

    def _log_keys(self):
        """The method's log keys, and the pseudo labels' accuracy where the unlabeled batches carry the truth."""
        unlabeled = self.loaders.get("u")
        if getattr(getattr(unlabeled, "dataset", None), "with_labels", False):
            logger.info("pseudo-label accuracy: logged (the unlabeled list's masks are there; they are never trained on)")
            return {**self.method.log_keys, **PSEUDO_ACCURACY}
        return dict(self.method.log_keys)

    def _build_optimisation(self):
        return (self.method.build_optimizer(self.model, self.lr, self.cfg["lr_multi"]),
                grad_scaler(self.env.device, self.cfg["amp"]))

    def _build_logging(self):
        """(TensorBoard, written by rank 0 under the save path; the run's provenance), logged."""
        tb = TensorBoard(self.save_path, enabled=self.env.is_main and self.save_path is not None)
        prov = provenance(self.cfg, self.env.world_size)
        logger.info(f"provenance: commit {prov['git_commit']}{' (uncommitted changes)' if prov['git_dirty'] else ''}, "
                    f"torch {prov['torch']}, CUDA {prov['cuda']}, world size {prov['world_size']}, host {prov['host']}; "
                    f"command: {prov['command']}")
        return tb, prov

    # ---- one step, one epoch ----------------------------------------------------------------------------

    def step(self, batch, epoch: int, i: int, **kwargs) -> torch.Tensor:
        """Iteration ``i`` of epoch ``epoch``: the method's forward passes and losses on ``batch`` (moved to the
        device) under the config's autocast, backward (through the loss scaler, a pass-through unless fp16),
        the optimizer step, the poly lr for the next iteration, the method's ``after_step``. ``kwargs`` go to
        ``method.losses`` (UniMatch V2's ``comp_drop_mask``). The lr written is poly(global iteration), the
        release's order: the next step runs at it. Returns the ``log_keys`` values as one detached tensor on
        the device: the caller reads it with a single host synchronisation."""
        iters = epoch * self.iters_per_epoch + i
        with autocast(self.env.device, self.cfg["amp"]):
            losses = self.method.losses(self.net, to_device(batch, self.env.device), epoch, **kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        set_lr(self.optimizer, poly_lr(self.lr, iters, self.total_iters), self.cfg["lr_multi"])
        self.method.after_step(self.model, iters)
        return torch.stack([losses[k] for k in self.log_keys]).detach()

    def train_epoch(self, epoch: int, start: int = 0, rng: Optional[dict] = None) -> int:
        """Train epoch ``epoch`` from its step ``start`` (a run resumed mid-epoch; ``rng``: the RNG states it
        was stopped with, else the epoch's seeds). Returns the index after the last step done: the epoch's
        length, or fewer when a stop was requested (on any process) after a step."""
        loaders = [self.loaders["l"]] + ([self.loaders["u"]] if "u" in self.loaders else [])
        for loader in loaders:
            loader.sampler.set_epoch(epoch, start * self.cfg["batch_size"])
        if rng is None:
            seed_all(epoch_seed(self.seed, epoch, self.env.rank))  # dropout, drop-path, complementary dropout
        else:
            set_rng_state(rng)
        n = self.iters_per_epoch
        if start >= n:
            return n
        batches = zip(*loaders) if len(loaders) == 2 else loaders[0]
        meters = {k: AverageMeter() for k in self.log_keys}
        log_every = max(1, n // 8)
        images_per_iter = self.cfg["batch_size"] * len(loaders) * self.env.world_size
        self.net.train()
        begin = time.time()
        for i, batch in enumerate(batches, start=start):
            step_start = time.monotonic()
            iters = epoch * n + i
            values = self.step(batch, epoch, i).tolist()  # the step's one host synchronisation
            if not math.isfinite(values[0]):
                raise FloatingPointError(f"non-finite loss ({values[0]}) at epoch {epoch}, iteration {i} (global "
                                         f"{iters}); stopping, {self._latest()} is left as it was")
            for key, v in zip(self.log_keys, values):
                meters[key].update(v)
                self.tb.scalar(f"train/{key}", v, iters)
            lr = self.optimizer.param_groups[0]["lr"]
            self.tb.scalar("train/lr", lr, iters)
            if i % log_every == 0:
                per_iter = (time.time() - begin) / (i - start + 1)
                eta = per_iter * (self.total_iters - iters - 1)
                shown = ", ".join(f"{label}: {meters[k].avg:.3f}" for k, label in self.log_keys.items())
                logger.info(f"Iters: {i}/{n}, {shown}, lr: {lr:.6f}, {images_per_iter / per_iter:.1f} img/s, "
                            f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
            self.stop.took(time.monotonic() - step_start)
            if i + 1 < n and self.stop_requested():
                return i + 1
        self.epoch_losses = {k: meters[k].avg for k in self.log_keys}
        return n

    def stop_requested(self) -> bool:
        """Whether any process was asked to stop (a signal, the time budget); one all-reduce with several."""
        return any_rank(self.stop.reason() is not None, self.env.device)

    def validate(self, epoch: int) -> Dict[str, float]:
        """Evaluate every model the method names; returns {tag: mIoU}."""
        scores, names = {}, class_names(self.cfg)
        for tag, module in self.method.eval_models(self.model):
            # Every rank evaluates with rank 0's buffers (BatchNorm statistics), as the release's DDP forward does.
            broadcast_buffers(module)
            miou, ious = evaluate(module, self.loaders["val"], self.cfg, self.env.device)
            suffix = f"_{tag}" if tag else ""
            logger.info(format_iou_table(names, ious, miou, self.cfg["eval_mode"] + (f" ({tag.upper()})" if tag else "")))
            self.tb.scalar(f"eval/mIoU{suffix}", miou, epoch)
            for name, iou in zip(names, ious):
                self.tb.scalar(f"eval/IoU_{name.replace(' ', '_')}{suffix}", iou, epoch)
            scores[tag] = miou
            self.ious[tag] = [float(v) for v in ious]
        return scores

    # ---- checkpoints ------------------------------------------------------------------------------------

    def _latest(self):
        return self.save_path / "latest.pth" if self.save_path is not None else "no checkpoint"

    def check_finite(self, epoch: int) -> None:
        """Stop (FloatingPointError) before anything is saved when a tensor the checkpoint would hold (on
        any process) is NaN or infinite: a checkpoint that cannot be resumed usefully is never written."""
        bad = first_non_finite(checkpoint_tensors(self.model, self.optimizer, self.method.extra_modules()))
        if any_rank(bad is not None, self.env.device):
            where = f"{bad} holds NaN or infinite values" if bad else "another process found NaN or infinite values"
            raise FloatingPointError(f"epoch {epoch}: {where}; nothing was saved ({self._latest()} and best.pth are "
                                     f"left as they were). Lower the lr or look at the data")

    def checkpoint(self, epoch: int) -> dict:
        """The release's checkpoint format {model, optimizer, epoch, best_epoch, previous_best} (per evaluated
        model), with the method's extra modules, the loss scaler and the run's provenance."""
        ckpt = {"model": release_state_dict(self.model), "optimizer": self.optimizer.state_dict(), "epoch": epoch}
        for entry, module in self.method.extra_modules().items():
            ckpt[entry] = release_state_dict(module)
        for tag, _ in self.method.eval_models(self.model):
            suffix = f"_{tag}" if tag else ""
            score, best_epoch = self.best.get(tag, (0.0, 0))
            ckpt[f"best_epoch{suffix}"], ckpt[f"previous_best{suffix}"] = best_epoch, score
        if self.scaler.is_enabled():
            ckpt["scaler"] = self.scaler.state_dict()
        ckpt["provenance"] = self.provenance
        return ckpt

    def save(self, epoch: int, scores: Dict[str, float]) -> None:
        """Track the best score of each evaluated model; write latest.pth, and best.pth when the model's
        score is the best (ties count for methods with ``best_if_equal``)."""
        self.check_finite(epoch)
        is_best = False
        for tag, miou in scores.items():
            best, _ = self.best.get(tag, (0.0, 0))
            if miou > best or (self.method.best_if_equal and miou == best):
                self.best[tag] = (miou, epoch)
                is_best = is_best or tag == ""
        if self.env.is_main and self.save_path is not None:
            ckpt = self.checkpoint(epoch)
            save_checkpoint(ckpt, self.save_path / "latest.pth")
            if is_best:
                save_checkpoint(ckpt, self.save_path / "best.pth")

    def save_interrupted(self, epoch: int, steps: int) -> None:
        """latest.pth for a run stopped after ``steps`` steps of epoch ``epoch``: the last whole epoch's
        format (``epoch`` = epoch - 1) plus ``interrupted`` = {epoch, iteration, world_size, ranks: [each
        process's RNG states and buffers (BatchNorm statistics, S-Mem, the EMA's buffers), which differ
        between processes mid-epoch]}, so that the resumed run continues bitwise as if never stopped."""
        self.check_finite(epoch)
        modules = {"model": self.model, **self.method.extra_modules()}
        own = {"rng": get_rng_state(),
               "buffers": {entry: {k: b.detach().cpu().clone() for k, b in m.named_buffers()}
                           for entry, m in modules.items()}}
        ranks = gather_objects(own)
        if self.env.is_main and self.save_path is not None:
            ckpt = self.checkpoint(epoch - 1)
            ckpt["interrupted"] = {"epoch": epoch, "iteration": steps, "world_size": self.env.world_size, "ranks": ranks}
            save_checkpoint(ckpt, self.save_path / "latest.pth")

    def resume(self):
        """Continue from ``latest.pth`` if the save path has one; returns (first epoch, its first step, the
        RNG states to continue with or None)."""
        ckpt = None
        if self.save_path is not None:
            ckpt = resume_latest(self.save_path, self.model, self.optimizer, self.method.extra_modules())
        if ckpt is None:
            return 0, 0, None
        for tag, _ in self.method.eval_models(self.model):
            suffix = f"_{tag}" if tag else ""
            if f"previous_best{suffix}" in ckpt:
                self.best[tag] = (ckpt[f"previous_best{suffix}"], ckpt.get(f"best_epoch{suffix}", ckpt["epoch"]))
        if self.scaler.is_enabled() and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        epoch, start, rng = ckpt["epoch"] + 1, 0, None
        stopped = ckpt.get("interrupted")
        if stopped and stopped["world_size"] == self.env.world_size:
            own = stopped["ranks"][self.env.rank]
            modules = {"model": self.model, **self.method.extra_modules()}
            with torch.no_grad():
                for entry, buffers in own["buffers"].items():
                    named = dict(modules[entry].named_buffers())
                    for key, value in buffers.items():
                        named[key].copy_(value)
            epoch, start, rng = stopped["epoch"], stopped["iteration"], own["rng"]
        elif stopped:  # (ckpt["epoch"] + 1 is the interrupted epoch: it restarts)
            logger.warning(f"latest.pth was written mid-epoch by {stopped['world_size']} process(es), this run has "
                           f"{self.env.world_size}: epoch {stopped['epoch']} restarts from its first step")
        where = f"epoch {epoch - 1} done" if not stopped else f"epoch {epoch}, step {start} of {self.iters_per_epoch}"
        logger.info(f"resumed from {self._latest()}: {where}, lr {self.optimizer.param_groups[0]['lr']:.8f}, best "
                    f"{self.best.get('', (0.0, 0))[0]:.2f}"
                    + (f", loss scale {self.scaler.get_scale():g}" if self.scaler.is_enabled() else ""))
        return epoch, start, rng

    # ---- the run ----------------------------------------------------------------------------------------

    def fit(self) -> float:
        """Train (or resume) to the config's last epoch, evaluating and checkpointing each; returns the best
        mIoU of the model. Stops with exit status EXIT_PREEMPTED (3) after a checkpoint when asked to stop."""
        epoch, start, rng = self.resume()
        for epoch in range(epoch, self.cfg["epochs"]):
            best = ", ".join(f"{tag.upper() or 'Previous best'}: {score:.2f} @epoch-{ep}" for tag, (score, ep) in
                             ((tag, self.best.get(tag, (0.0, 0))) for tag, _ in self.method.eval_models(self.model)))
            logger.info(f"===========> Epoch: {epoch}, LR: {self.optimizer.param_groups[0]['lr']:.5f}, {best}")
            epoch_start = time.monotonic()
            steps = self.train_epoch(epoch, start, rng)
            start, rng = 0, None
            if steps < self.iters_per_epoch or self.stop_requested():  # (before the evaluation: it may take long)
                self.save_interrupted(epoch, steps)
                self._exit_preempted(epoch, steps)
            began = time.monotonic()
            scores = self.validate(epoch)
            self.save(epoch, scores)
            self.record_epoch(epoch, scores, time.monotonic() - epoch_start)
            self.stop.took(time.monotonic() - began)
            if epoch + 1 < self.cfg["epochs"] and self.stop_requested():
                self._exit_preempted(epoch)
        return self.best.get("", (0.0, 0))[0]

    def record_epoch(self, epoch: int, scores: Dict[str, float], seconds: float) -> None:
        """One line of ``metrics.jsonl`` (rank 0, with a save path): the epoch, the mIoU and per-class IoU of
        every evaluated model, the mean of each logged training value, the lr, and the epoch's seconds
        (training, from where a resumed run started it, and evaluation)."""
        if not (self.env.is_main and self.save_path is not None):
            return
        record = {"epoch": epoch, "epochs": self.cfg["epochs"], "seconds": round(seconds, 3),
                  "lr": self.optimizer.param_groups[0]["lr"], "train": self.epoch_losses,
                  "miou": scores, "iou": {tag: self.ious.get(tag) for tag in scores},
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        append_epoch_record(self.save_path, record)

    def _exit_preempted(self, epoch, steps=None):
        """Log the stop and leave with EXIT_PREEMPTED (the checkpoint is written)."""
        reason = self.stop.reason() or "another process was asked to stop"
        at = f"after step {steps} of epoch {epoch}" if steps is not None else f"after epoch {epoch}"
        logger.info(f"stopping ({reason}) {at}: {self._latest()} holds the run; run the same command again to "
                    f"continue (exit status {EXIT_PREEMPTED})")
        raise SystemExit(EXIT_PREEMPTED)

    def close(self) -> None:
        """Stop the loaders' worker processes, close the TensorBoard writer and release the save path's lock
        (however the run ended)."""
        shutdown_loaders(self.loaders.values())
        if self.tb is not None:
            self.tb.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def main(args) -> float:
    """Train as ``train.py`` asks; returns the best mIoU of the model. Stops with exit status
    EXIT_PREEMPTED (3) after a checkpoint on SIGTERM / SIGUSR1 or when ``args.time_limit`` runs out."""
    env = setup_distributed(args.port)
    setup_logger(env.rank)
    if env.launcher == "torchrun":
        watch_parent()  # a killed torchrun must not leave its workers training
    stop = StopRequest(parse_duration(args.time_limit) if getattr(args, "time_limit", None) else None).install()
    trainer = None
    try:
        if Path(args.save_path).exists() and not Path(args.save_path).is_dir():
            make_save_path(args.save_path)  # fails at once, before the config and the data are read
        cfg = load_training_config(args.config, args.method, overrides=getattr(args, "opts", None))
        logger.info(f"config {args.config}: {cfg}")
        logger.info(f"launcher {env.launcher}, world size {env.world_size}, device {env.device}, backend {env.backend}, "
                    f"seed {args.seed}")
        trainer = Trainer(cfg, env, save_path=args.save_path, labeled_list=args.labeled_id_path,
                          unlabeled_list=args.unlabeled_id_path, seed=args.seed, stop=stop, config_path=args.config)
        return trainer.fit()
    finally:
        if trainer is not None:  # however the run ends (its checkpoint, if any, is written by now)
            trainer.close()
        stop.uninstall()
        cleanup()
