"""The training loop of AllSpark and its two baselines, as in the release.

- ``allspark``: an eval-mode forward of the unlabeled batch (no grad) gives pseudo logits and their
  argmax labels; a train-mode forward of cat(labeled, unlabeled) with those logits, S-Mem replacing
  keys and values from ``warmup_epoch`` on; loss (CE or OHEM on labeled + CE on pseudo labels) / 2.
- ``semi``: the same with the plain SegFormer decoder (plain pseudo-labelling).
- ``sup``: the labeled list alone.

SGD (momentum 0.9, weight decay 1e-4) with two groups, backbone at lr and the rest at lr x lr_multi;
poly (power 0.9) set after every step over epochs x iterations per epoch.
"""
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError, load_config
from ..data import CLASSES, PAD_UNLABELED, DataError
from ..models import build_model
from ..models.allspark import ChannelAttention
from .checkpoint import release_state_dict, resume, save_checkpoint
from .dist import broadcast_buffers, cleanup, setup_distributed
from .evaluate import evaluate
from .loaders import build_loaders, epoch_seed, seed_all
from .logger import AverageMeter, TensorBoard, format_iou_table, setup_logger
from .losses import build_criterion
from .speed import autocast, compile_model, grad_scaler

__all__ = ["main", "build_optimizer", "poly_lr", "compute_losses", "train_step"]

logger = logging.getLogger("allspark")


def build_optimizer(model, cfg):
    """SGD with the backbone at lr and every other parameter at lr x lr_multi."""
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.SGD([{"params": backbone, "lr": cfg["lr"]},
                            {"params": rest, "lr": cfg["lr"] * cfg["lr_multi"]}],
                           lr=cfg["lr"], momentum=0.9, weight_decay=1e-4)


def poly_lr(base_lr, iters, total_iters, power=0.9):
    return base_lr * (1 - iters / total_iters) ** power


def class_names(cfg):
    names = CLASSES.get(cfg["dataset"])
    return names if names is not None and len(names) == cfg["nclass"] else [str(i) for i in range(cfg["nclass"])]


@dataclass
class Run:
    """What the loop needs, built once by :func:`main`."""
    cfg: dict
    env: object
    model: nn.Module  # the bare model
    net: nn.Module  # the model behind DDP (or the bare model for one process)
    optimizer: torch.optim.Optimizer
    criterion_l: nn.Module
    criterion_u: nn.Module
    loaders: dict
    save_path: Path
    seed: int
    tb: TensorBoard
    scaler: torch.amp.GradScaler = None
    warmup_epoch: int = 0
    total_iters: int = 0
    previous_best: float = 0.0
    best_epoch: int = 0
    names: list = field(default_factory=list)

    @property
    def iters_per_epoch(self):
        return len(self.loaders["u" if "u" in self.loaders else "l"])


def _to(device, *tensors):
    return [t.to(device, non_blocking=True) for t in tensors]


def compute_losses(run, batch, epoch):
    """Forward of one iteration -> (loss, loss_x, loss_u)."""
    cfg, net, device = run.cfg, run.net, run.env.device
    if cfg["method"] == "sup":
        img_x, mask_x = _to(device, *batch)
        loss_x = run.criterion_l(net(img_x), mask_x)
        return loss_x, loss_x, torch.zeros((), device=device)
    (img_x, mask_x), (img_u, ignore_u) = batch
    img_x, mask_x, img_u, ignore_u = _to(device, img_x, mask_x, img_u, ignore_u)
    with torch.no_grad():
        net.eval()
        pseudo = net(img_u).detach()
    net.train()
    mask_u = pseudo.argmax(dim=1)
    if cfg["ignore_unlabeled_padding"]:
        mask_u = mask_u.masked_fill(ignore_u == PAD_UNLABELED, 255)  # (a boolean index would sync)
    extra = {}
    if cfg["method"] == "allspark":
        extra = dict(pseudo_logits=pseudo, use_memory=epoch >= run.warmup_epoch)
    preds = net(torch.cat((img_x, img_u)), **extra)
    pred_x, pred_u = preds.split([img_x.shape[0], img_u.shape[0]])
    loss_x = run.criterion_l(pred_x, mask_x)
    loss_u = run.criterion_u(pred_u, mask_u)
    return (loss_x + loss_u) / 2.0, loss_x, loss_u


def train_step(run, batch, epoch):
    """One optimisation step: the forward passes under the config's autocast, backward (through the
    fp16 loss scaler when amp is fp16), SGD step. Returns (loss, loss_x, loss_u) as one detached
    (3,) tensor on the device: the caller reads it with a single host synchronisation."""
    with autocast(run.env.device, run.cfg["amp"]):
        loss, loss_x, loss_u = compute_losses(run, batch, epoch)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return torch.stack([loss, loss_x, loss_u]).detach()


def train_one_epoch(run, epoch):
    cfg, optimizer = run.cfg, run.optimizer
    loaders = [run.loaders["l"]] + ([run.loaders["u"]] if "u" in run.loaders else [])
    for loader in loaders:
        loader.sampler.set_epoch(epoch)
    seed_all(epoch_seed(run.seed, epoch, run.env.rank))  # dropout and drop-path in this process
    batches = zip(*loaders) if len(loaders) == 2 else loaders[0]
    meters = {k: AverageMeter() for k in ("loss", "loss_x", "loss_u")}
    n = run.iters_per_epoch
    log_every = max(1, n // 8)
    images_per_iter = cfg["batch_size"] * len(loaders) * run.env.world_size
    run.net.train()
    start = time.time()
    for i, batch in enumerate(batches):
        iters = epoch * n + i
        values = train_step(run, batch, epoch).tolist()  # the step's one host synchronisation
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"non-finite loss ({values[0]}) at epoch {epoch}, iteration {i} (global {iters}); "
                                     f"stopping, {run.save_path / 'latest.pth'} is left as it was")
        lr = poly_lr(cfg["lr"], iters, run.total_iters)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.param_groups[1]["lr"] = lr * cfg["lr_multi"]

        for key, v in zip(("loss", "loss_x", "loss_u"), values):
            meters[key].update(v)
            run.tb.scalar(f"train/{key}", v, iters)
        run.tb.scalar("train/lr", lr, iters)
        if i % log_every == 0:
            elapsed = time.time() - start
            per_iter = elapsed / (i + 1)
            eta = per_iter * (run.total_iters - iters - 1)
            logger.info(f"Iters: {i}/{n}, Total loss: {meters['loss'].avg:.3f}, Loss x: {meters['loss_x'].avg:.3f}, "
                        f"Loss u: {meters['loss_u'].avg:.3f}, lr: {lr:.6f}, {images_per_iter / per_iter:.1f} img/s, "
                        f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")


def _validate(run, epoch):
    # Every rank evaluates with rank 0's buffers (BatchNorm statistics), as the release's DDP forward does.
    broadcast_buffers(run.model)
    miou, ious = evaluate(run.model, run.loaders["val"], run.cfg, run.env.device)
    logger.info(format_iou_table(run.names, ious, miou, run.cfg["eval_mode"]))
    run.tb.scalar("eval/mIoU", miou, epoch)
    for name, iou in zip(run.names, ious):
        run.tb.scalar(f"eval/IoU_{name.replace(' ', '_')}", iou, epoch)
    return miou


def _save(run, epoch, miou):
    is_best = miou > run.previous_best
    if is_best:
        run.previous_best, run.best_epoch = miou, epoch
    if run.env.is_main:
        ckpt = {"model": release_state_dict(run.model), "optimizer": run.optimizer.state_dict(), "epoch": epoch,
                "best_epoch": run.best_epoch, "previous_best": run.previous_best}
        if run.scaler.is_enabled():
            ckpt["scaler"] = run.scaler.state_dict()
        save_checkpoint(ckpt, run.save_path / "latest.pth")
        if is_best:
            save_checkpoint(ckpt, run.save_path / "best.pth")


def _prepare_model(cfg, env):
    model = build_model(cfg["model"])
    if cfg["method"] == "allspark" and cfg["memory_sync"] == "gather":
        for m in model.modules():
            if isinstance(m, ChannelAttention):
                m.gather_memory = True
    model.to(env.device)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the release: fixed crop sizes
    if env.world_size > 1 and env.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        logger.info("SyncBatchNorm: on (CUDA)")
    elif env.world_size > 1:
        logger.info("SyncBatchNorm: off on CPU (DDP refuses it on CPU modules): plain BatchNorm, statistics per "
                    "process, rank 0's kept by DDP's buffer broadcast")
    net = model
    if env.world_size > 1:
        # DDP's default: rank 0's buffers (BatchNorm statistics, S-Mem) are broadcast at every forward.
        net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        # On the CPU the weight gradients of the depth-wise (O, 1, 3, 3) and 1x1 (O, I, 1, 1) convolutions
        # come back with other strides on their size-1 dimensions only: the same memory order as the
        # bucket view, so DDP's copy costs nothing extra, but DDP's strict stride check warns (once, for
        # the first such parameter). Only those shapes are silenced (tests/test_engine_units checks the claim).
        warnings.filterwarnings("ignore", message=r"(?s)Grad strides do not match bucket view strides.*"
                                r"grad\.sizes\(\) = \[\d+, (1, 3, 3|\d+, 1, 1)\]")
    if cfg["compile"]:
        net = compile_model(net)
        logger.info("torch.compile: on (the first steps of each mode compile)")
    if cfg["amp"] != "none":
        logger.info(f"mixed precision: {cfg['amp']} autocast in the training step"
                    f"{' with loss scaling' if cfg['amp'] == 'fp16' else ''}; evaluation in fp32")
    return model, net


def build_run(args, env):
    cfg = load_config(args.config, args.method)
    if cfg["method"] != "sup" and not args.unlabeled_id_path:
        raise ConfigError(f"method {cfg['method']!r} needs --unlabeled-id-path")
    save_path = Path(args.save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    logger.info(f"config {args.config}: {cfg}")
    logger.info(f"launcher {env.launcher}, world size {env.world_size}, device {env.device}, backend {env.backend}, "
                f"seed {args.seed}")
    seed_all(args.seed)
    model, net = _prepare_model(cfg, env)
    logger.info(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    loaders = build_loaders(cfg, env, args.labeled_id_path, args.unlabeled_id_path, args.seed)
    run = Run(cfg=cfg, env=env, model=model, net=net, optimizer=build_optimizer(model, cfg),
              criterion_l=build_criterion(cfg["criterion"]).to(env.device),
              criterion_u=nn.CrossEntropyLoss(ignore_index=255).to(env.device), loaders=loaders,
              save_path=save_path, seed=args.seed, tb=TensorBoard(save_path, enabled=env.is_main),
              scaler=grad_scaler(env.device, cfg["amp"]),
              warmup_epoch=getattr(model.decoder, "warmup_epoch", 0), names=class_names(cfg))
    if run.iters_per_epoch == 0:
        key = "u" if "u" in loaders else "l"
        raise DataError(f"the {'unlabeled' if key == 'u' else 'labeled'} list has {len(loaders[key].dataset)} "
                         f"images: fewer than batch_size {cfg['batch_size']} x {env.world_size} processes")
    run.total_iters = run.iters_per_epoch * cfg["epochs"]
    return run


def main(args):
    """Train as ``train.py`` asks; returns the best mIoU."""
    env = setup_distributed(args.port)
    setup_logger(env.rank)
    try:
        run = build_run(args, env)
        start_epoch = 0
        ckpt = resume(run.save_path, run.model, run.optimizer)
        if ckpt is not None:
            start_epoch = ckpt["epoch"] + 1
            run.previous_best, run.best_epoch = ckpt["previous_best"], ckpt.get("best_epoch", ckpt["epoch"])
            if run.scaler.is_enabled() and "scaler" in ckpt:
                run.scaler.load_state_dict(ckpt["scaler"])
            logger.info(f"resumed from {run.save_path / 'latest.pth'}: epoch {ckpt['epoch']} done, "
                        f"lr {run.optimizer.param_groups[0]['lr']:.8f}, best {run.previous_best:.2f}"
                        + (f", loss scale {run.scaler.get_scale():g}" if run.scaler.is_enabled() else ""))
        for epoch in range(start_epoch, run.cfg["epochs"]):
            logger.info(f"===========> Epoch: {epoch}, LR: {run.optimizer.param_groups[0]['lr']:.5f}, "
                        f"Previous best: {run.previous_best:.2f} @epoch-{run.best_epoch}")
            train_one_epoch(run, epoch)
            _save(run, epoch, _validate(run, epoch))
        run.tb.close()
        return run.previous_best
    finally:
        cleanup()
