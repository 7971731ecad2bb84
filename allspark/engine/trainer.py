"""The training loop, shared by every method (``allspark.methods``): what differs between methods
(loaders' views, optimizer, losses, EMA teacher, evaluated models) is the method's.

Per iteration: the method's losses under the config's autocast, backward, the optimizer step, the poly
lr (power 0.9, over epochs x iterations per epoch) written after the step as the releases do, then the
method's ``after_step`` (UniMatch V2's EMA). Every epoch is evaluated; ``latest.pth`` / ``best.pth``
are written atomically and a run started again on the same save path resumes from ``latest.pth``.
"""
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError, resolve_path
from ..data import DataError, class_names
from ..data.check import preflight
from ..files import WriteError
from ..methods import get_method, load_training_config, to_device
from ..models import build_model
from .checkpoint import checkpoint_tensors, first_non_finite, release_state_dict, resume, save_checkpoint
from .cluster import EXIT_PREEMPTED, RunLock, RunLockedError, StopRequest, parse_duration, provenance, watch_parent
from .dist import any_rank, broadcast_buffers, cleanup, gather_objects, setup_distributed
from .rng import get_rng_state, set_rng_state
from .evaluate import evaluate
from .loaders import build_loaders, epoch_seed, seed_all, shutdown_loaders
from .logger import AverageMeter, TensorBoard, format_iou_table, setup_logger
from .losses import build_criterion
from .speed import autocast, compile_model, configure_backends, grad_scaler

__all__ = ["main", "poly_lr", "set_lr", "train_step"]

logger = logging.getLogger("allspark")


def poly_lr(base_lr, iters, total_iters, power=0.9):
    return base_lr * (1 - iters / total_iters) ** power


def set_lr(optimizer, lr, lr_multi):
    """Group 0 (the backbone) at ``lr``, group 1 (the rest) at ``lr x lr_multi``."""
    optimizer.param_groups[0]["lr"] = lr
    optimizer.param_groups[1]["lr"] = lr * lr_multi


def train_step(method, net, batch, optimizer, scaler, *, epoch, device, amp="none", **kwargs):
    """One optimisation step of ``method``: its forward passes and losses on ``batch`` (moved to
    ``device``) under the ``amp`` autocast, backward (through ``scaler``, a pass-through unless fp16),
    the optimizer step. ``kwargs`` go to ``method.losses`` (e.g. UniMatch V2's ``comp_drop_mask``).
    Returns the method's ``log_keys`` values as one detached tensor on the device: the caller reads
    it with a single host synchronisation."""
    with autocast(device, amp):
        losses = method.losses(net, to_device(batch, device), epoch, **kwargs)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return torch.stack([losses[k] for k in method.log_keys]).detach()


@dataclass
class _Run:
    """What the loop of one training run works with, built once by :func:`_build_run`."""
    cfg: dict
    env: object
    method: object
    model: nn.Module  # the bare model
    net: nn.Module  # the model behind DDP / torch.compile (or the bare model)
    optimizer: torch.optim.Optimizer
    scaler: object
    loaders: dict
    save_path: Path
    seed: int
    tb: TensorBoard
    iters_per_epoch: int = 0
    total_iters: int = 0
    best: dict = field(default_factory=dict)  # eval tag -> (best mIoU, its epoch)
    names: list = field(default_factory=list)
    stop: StopRequest = field(default_factory=StopRequest)
    provenance: dict = field(default_factory=dict)
    lock: object = None  # rank 0's RunLock, held for the run's life


def train_one_epoch(run, epoch, start=0, rng=None):
    """Train epoch ``epoch`` from its step ``start`` (a run resumed mid-epoch; ``rng``: the RNG states it
    was stopped with, else the epoch's seeds). Returns the index after the last step done: the epoch's
    length, or fewer when a stop was requested (on any process) after a step."""
    cfg, method = run.cfg, run.method
    loaders = [run.loaders["l"]] + ([run.loaders["u"]] if "u" in run.loaders else [])
    for loader in loaders:
        loader.sampler.set_epoch(epoch, start * cfg["batch_size"])
    if rng is None:
        seed_all(epoch_seed(run.seed, epoch, run.env.rank))  # dropout, drop-path, complementary dropout
    else:
        set_rng_state(rng)
    n = run.iters_per_epoch
    if start >= n:
        return n
    batches = zip(*loaders) if len(loaders) == 2 else loaders[0]
    meters = {k: AverageMeter() for k in method.log_keys}
    log_every = max(1, n // 8)
    images_per_iter = cfg["batch_size"] * len(loaders) * run.env.world_size
    run.net.train()
    begin = time.time()
    for i, batch in enumerate(batches, start=start):
        step_start = time.monotonic()
        iters = epoch * n + i
        values = train_step(method, run.net, batch, run.optimizer, run.scaler, epoch=epoch, device=run.env.device,
                            amp=cfg["amp"]).tolist()  # the step's one host synchronisation
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"non-finite loss ({values[0]}) at epoch {epoch}, iteration {i} (global {iters}); "
                                     f"stopping, {run.save_path / 'latest.pth'} is left as it was")
        lr = poly_lr(cfg["lr"], iters, run.total_iters)
        set_lr(run.optimizer, lr, cfg["lr_multi"])
        method.after_step(run.model, iters)

        for key, v in zip(method.log_keys, values):
            meters[key].update(v)
            run.tb.scalar(f"train/{key}", v, iters)
        run.tb.scalar("train/lr", lr, iters)
        if i % log_every == 0:
            per_iter = (time.time() - begin) / (i - start + 1)
            eta = per_iter * (run.total_iters - iters - 1)
            shown = ", ".join(f"{label}: {meters[k].avg:.3f}" for k, label in method.log_keys.items())
            logger.info(f"Iters: {i}/{n}, {shown}, lr: {lr:.6f}, {images_per_iter / per_iter:.1f} img/s, "
                        f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        run.stop.took(time.monotonic() - step_start)
        if i + 1 < n and _stop_now(run):
            return i + 1
    return n


def _stop_now(run):
    """Whether any process was asked to stop (a signal, the time budget); one all-reduce with several."""
    return any_rank(run.stop.reason() is not None, run.env.device)


def _validate(run, epoch):
    """Evaluate every model the method names; returns {tag: mIoU}."""
    scores = {}
    for tag, module in run.method.eval_models(run.model):
        # Every rank evaluates with rank 0's buffers (BatchNorm statistics), as the release's DDP forward does.
        broadcast_buffers(module)
        miou, ious = evaluate(module, run.loaders["val"], run.cfg, run.env.device)
        suffix = f"_{tag}" if tag else ""
        logger.info(format_iou_table(run.names, ious, miou, run.cfg["eval_mode"] + (f" ({tag.upper()})" if tag else "")))
        run.tb.scalar(f"eval/mIoU{suffix}", miou, epoch)
        for name, iou in zip(run.names, ious):
            run.tb.scalar(f"eval/IoU_{name.replace(' ', '_')}{suffix}", iou, epoch)
        scores[tag] = miou
    return scores


def check_finite(run, epoch):
    """Stop (FloatingPointError) before anything is saved when a tensor the checkpoint would hold (on
    any process) is NaN or infinite: a checkpoint that cannot be resumed usefully is never written."""
    bad = first_non_finite(checkpoint_tensors(run.model, run.optimizer, run.method.extra_modules()))
    if any_rank(bad is not None, run.env.device):
        where = f"{bad} holds NaN or infinite values" if bad else "another process found NaN or infinite values"
        raise FloatingPointError(f"epoch {epoch}: {where}; nothing was saved ({run.save_path / 'latest.pth'} and "
                                 f"best.pth are left as they were). Lower the lr or look at the data")


def _checkpoint(run, epoch):
    """The release's checkpoint format {model, optimizer, epoch, best_epoch, previous_best} (per evaluated
    model), with the method's extra modules, the loss scaler and the run's provenance."""
    ckpt = {"model": release_state_dict(run.model), "optimizer": run.optimizer.state_dict(), "epoch": epoch}
    for entry, module in run.method.extra_modules().items():
        ckpt[entry] = release_state_dict(module)
    for tag, _ in run.method.eval_models(run.model):
        suffix = f"_{tag}" if tag else ""
        score, best_epoch = run.best.get(tag, (0.0, 0))
        ckpt[f"best_epoch{suffix}"], ckpt[f"previous_best{suffix}"] = best_epoch, score
    if run.scaler.is_enabled():
        ckpt["scaler"] = run.scaler.state_dict()
    ckpt["provenance"] = run.provenance
    return ckpt


def _save(run, epoch, scores):
    """Track the best score of each evaluated model; write latest.pth, and best.pth when the model's
    score is the best (ties count for methods with ``best_if_equal``)."""
    check_finite(run, epoch)
    is_best = False
    for tag, miou in scores.items():
        best, _ = run.best.get(tag, (0.0, 0))
        if miou > best or (run.method.best_if_equal and miou == best):
            run.best[tag] = (miou, epoch)
            is_best = is_best or tag == ""
    if run.env.is_main:
        ckpt = _checkpoint(run, epoch)
        save_checkpoint(ckpt, run.save_path / "latest.pth")
        if is_best:
            save_checkpoint(ckpt, run.save_path / "best.pth")


def _save_interrupted(run, epoch, steps):
    """latest.pth for a run stopped after ``steps`` steps of epoch ``epoch``: the last whole epoch's
    format (``epoch`` = epoch - 1) plus ``interrupted`` = {epoch, iteration, world_size, ranks: [each
    process's RNG states and buffers (BatchNorm statistics, S-Mem, the EMA's buffers), which differ
    between processes mid-epoch]}, so that the resumed run continues bitwise as if never stopped."""
    check_finite(run, epoch)
    modules = {"model": run.model, **run.method.extra_modules()}
    own = {"rng": get_rng_state(),
           "buffers": {entry: {k: b.detach().cpu().clone() for k, b in m.named_buffers()} for entry, m in modules.items()}}
    ranks = gather_objects(own)
    if run.env.is_main:
        ckpt = _checkpoint(run, epoch - 1)
        ckpt["interrupted"] = {"epoch": epoch, "iteration": steps, "world_size": run.env.world_size, "ranks": ranks}
        save_checkpoint(ckpt, run.save_path / "latest.pth")


def _prepare_model(cfg, env, method_cls):
    model = build_model(cfg["model"])
    if cfg["lock_backbone"]:
        model.backbone.requires_grad_(False)
        logger.info("lock_backbone: the encoder is frozen")
    method_cls.configure_model(cfg, model)
    if cfg["activation_checkpointing"]:
        if not hasattr(model.backbone, "set_grad_checkpointing"):
            raise ConfigError(f"activation_checkpointing: the encoder {type(model.backbone).__name__} cannot recompute "
                              "its blocks")
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
        unused = method_cls.find_unused_parameters or any(getattr(m, "has_unused_parameters", False)
                                                          for m in model.modules())
        net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                      find_unused_parameters=unused)
    if cfg["compile"]:
        net = compile_model(net)
        logger.info("torch.compile: on (the first steps of each mode compile)")
    if cfg["amp"] != "none":
        logger.info(f"mixed precision: {cfg['amp']} autocast in the training step"
                    f"{' with loss scaling' if cfg['amp'] == 'fp16' else ''}; evaluation in fp32")
    return model, net


def make_save_path(path):
    """Create the run's folder; a file in its place or a folder that cannot be made is a clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--save-path {path} is a file, not a folder: name a folder for the checkpoints and logs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot make the save path {path}: {exc.strerror or exc}") from None
    return path


def _lock(save_path, env):
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


def _build_run(args, env):
    save_path = Path(args.save_path)
    if save_path.exists() and not save_path.is_dir():
        make_save_path(save_path)  # fails at once, before the config and the data are read
    cfg = load_training_config(args.config, args.method, overrides=getattr(args, "opts", None))
    method_cls = get_method(cfg["method"])
    if method_cls.unlabeled_mode is not None and not args.unlabeled_id_path:
        raise ConfigError(f"method {cfg['method']!r} needs --unlabeled-id-path")
    logger.info(f"config {args.config}: {cfg}")
    logger.info(f"launcher {env.launcher}, world size {env.world_size}, device {env.device}, backend {env.backend}, "
                f"seed {args.seed}")
    lists = [(args.labeled_id_path, True), (resolve_path(cfg["val_id_path"]), True)]
    if method_cls.unlabeled_mode is not None:
        lists.insert(1, (args.unlabeled_id_path, False))  # unlabeled masks are optional
    checked = preflight(resolve_path(cfg["data_root"]), lists, hint=f" (data_root of {args.config}; see README: Data)")
    logger.info(f"data: the {checked} files the lists name are there")
    save_path = make_save_path(args.save_path)  # only once the run can start
    lock = _lock(save_path, env)
    seed_all(args.seed)
    model, net = _prepare_model(cfg, env, method_cls)
    logger.info(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    method = method_cls.from_config(cfg, model, build_criterion(cfg["criterion"]))
    loaders = build_loaders(cfg, env, args.labeled_id_path, args.unlabeled_id_path, args.seed,
                            method.labeled_mode, method.unlabeled_mode, method.cut_labeled, cfg["pseudo_label_accuracy"])
    if "u" in loaders and loaders["u"].dataset.with_labels:
        method.track_pseudo_accuracy()
        logger.info("pseudo-label accuracy: logged (the unlabeled list's masks are there; they are never trained on)")
    run = _Run(cfg=cfg, env=env, method=method, model=model, net=net, lock=lock,
               provenance=provenance(cfg, env.world_size),
               optimizer=method.build_optimizer(model, cfg["lr"], cfg["lr_multi"]),
               scaler=grad_scaler(env.device, cfg["amp"]), loaders=loaders, save_path=save_path, seed=args.seed,
               tb=TensorBoard(save_path, enabled=env.is_main), names=class_names(cfg))
    run.iters_per_epoch = len(loaders["u" if "u" in loaders else "l"])
    p = run.provenance
    logger.info(f"provenance: commit {p['git_commit']}{' (uncommitted changes)' if p['git_dirty'] else ''}, torch "
                f"{p['torch']}, CUDA {p['cuda']}, world size {p['world_size']}, host {p['host']}; command: {p['command']}")
    if run.iters_per_epoch == 0:
        key = "u" if "u" in loaders else "l"
        raise DataError(f"the {'unlabeled' if key == 'u' else 'labeled'} list has {len(loaders[key].dataset)} "
                         f"images: fewer than batch_size {cfg['batch_size']} x {env.world_size} processes")
    run.total_iters = run.iters_per_epoch * cfg["epochs"]
    return run


def _resume(run):
    """Continue from ``latest.pth`` if the save path has one; returns (first epoch, its first step, the
    RNG states to continue with or None)."""
    ckpt = resume(run.save_path, run.model, run.optimizer, run.method.extra_modules())
    if ckpt is None:
        return 0, 0, None
    for tag, _ in run.method.eval_models(run.model):
        suffix = f"_{tag}" if tag else ""
        if f"previous_best{suffix}" in ckpt:
            run.best[tag] = (ckpt[f"previous_best{suffix}"], ckpt.get(f"best_epoch{suffix}", ckpt["epoch"]))
    if run.scaler.is_enabled() and "scaler" in ckpt:
        run.scaler.load_state_dict(ckpt["scaler"])
    epoch, start, rng = ckpt["epoch"] + 1, 0, None
    stopped = ckpt.get("interrupted")
    if stopped and stopped["world_size"] == run.env.world_size:
        own = stopped["ranks"][run.env.rank]
        modules = {"model": run.model, **run.method.extra_modules()}
        with torch.no_grad():
            for entry, buffers in own["buffers"].items():
                named = dict(modules[entry].named_buffers())
                for key, value in buffers.items():
                    named[key].copy_(value)
        epoch, start, rng = stopped["epoch"], stopped["iteration"], own["rng"]
    elif stopped:
        logger.warning(f"latest.pth was written mid-epoch by {stopped['world_size']} process(es), this run has "
                       f"{run.env.world_size}: epoch {stopped['epoch']} restarts from its first step")
        epoch = stopped["epoch"]
    where = f"epoch {epoch - 1} done" if not stopped else f"epoch {epoch}, step {start} of {run.iters_per_epoch}"
    logger.info(f"resumed from {run.save_path / 'latest.pth'}: {where}, "
                f"lr {run.optimizer.param_groups[0]['lr']:.8f}, best {run.best.get('', (0.0, 0))[0]:.2f}"
                + (f", loss scale {run.scaler.get_scale():g}" if run.scaler.is_enabled() else ""))
    return epoch, start, rng


def _stop(run, reason, epoch, steps=None):
    """Log the stop and leave with EXIT_PREEMPTED (the checkpoint is written)."""
    at = f"after step {steps} of epoch {epoch}" if steps is not None else f"after epoch {epoch}"
    logger.info(f"stopping ({reason}) {at}: {run.save_path / 'latest.pth'} holds the run; run the same command "
                f"again to continue (exit status {EXIT_PREEMPTED})")
    run.tb.close()
    raise SystemExit(EXIT_PREEMPTED)


def main(args):
    """Train as ``train.py`` asks; returns the best mIoU of the model. Stops with exit status
    EXIT_PREEMPTED (3) after a checkpoint on SIGTERM / SIGUSR1 or when ``args.time_limit`` runs out."""
    env = setup_distributed(args.port)
    setup_logger(env.rank)
    if env.launcher == "torchrun":
        watch_parent()  # a killed torchrun must not leave its workers training
    stop = StopRequest(parse_duration(args.time_limit) if getattr(args, "time_limit", None) else None).install()
    run = None
    try:
        run = _build_run(args, env)
        run.stop = stop
        epoch, start, rng = _resume(run)
        for epoch in range(epoch, run.cfg["epochs"]):
            best = ", ".join(f"{tag.upper() or 'Previous best'}: {score:.2f} @epoch-{ep}" for tag, (score, ep) in
                             ((tag, run.best.get(tag, (0.0, 0))) for tag, _ in run.method.eval_models(run.model)))
            logger.info(f"===========> Epoch: {epoch}, LR: {run.optimizer.param_groups[0]['lr']:.5f}, {best}")
            steps = train_one_epoch(run, epoch, start, rng)
            start, rng = 0, None
            if steps < run.iters_per_epoch or _stop_now(run):  # (before the evaluation: it may take long)
                _save_interrupted(run, epoch, steps)
                _stop(run, run.stop.reason() or "another process was asked to stop", epoch, steps)
            began = time.monotonic()
            _save(run, epoch, _validate(run, epoch))
            stop.took(time.monotonic() - began)
            if epoch + 1 < run.cfg["epochs"] and _stop_now(run):
                _stop(run, run.stop.reason() or "another process was asked to stop", epoch)
        run.tb.close()
        return run.best.get("", (0.0, 0))[0]
    finally:
        if run is not None:  # however the run ends (its checkpoint, if any, is written by now)
            shutdown_loaders(run.loaders.values())
        cleanup()
