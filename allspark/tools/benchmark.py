"""Time the training step and the eval forward of a config's model on synthetic tensors.

    python -m allspark.tools.benchmark --config configs/pascal_allspark.yaml --backbone mit_b2 --crop 257 \
        --batch-size 2 --steps 5 --warmup 2 --device cpu --out bench.json

The training step is the trainer's own (:meth:`allspark.engine.trainer.Trainer.step`: the trainer built
with the config's model, stepping on one synthetic batch) with the config's method: for AllSpark an
eval-mode pseudo-label pass, a train forward of labeled + unlabeled, the loss, backward and an SGD step; for
UniMatch V2 the EMA teacher's pass on the weak view, the labeled forward, the forward of both CutMixed strong
views with complementary dropout, backward, AdamW and the EMA update; the baselines' configs time their own
steps. All under the config's ``amp`` and ``compile`` unless ``--amp`` / ``--[no-]compile`` say otherwise.
The eval forward runs under the same autocast. Prints and writes median / min / max seconds per step, images
per second, peak memory (CUDA max_memory_allocated, or the process's peak RSS on the CPU), the step's own
peak allocation and its host synchronisations.
"""
import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings

import torch
from torch.overrides import TorchFunctionMode

from ..config import AMP_MODES, DPT_HEADS, load_training_config
from ..engine.dist import DistEnv
from ..engine.speed import autocast
from ..engine.trainer import Trainer
from ..models import MIT_PRESETS
from ..models.allspark import ATTENTION_PATHS, DEFAULT_ATTENTION
from ..models.builder import ALIASES
from ..models.dinov2 import DINOV2_PRESETS
from ..models.dinov3 import DINOV3_PRESETS

VIT_PRESETS = {**DINOV2_PRESETS, **DINOV3_PRESETS}

__all__ = ["run_benchmark", "build_trainer", "count_host_syncs", "step_peak_memory_mb", "main"]


def _is_allspark(decoder):
    """Whether a decoder section builds the AllSpark decoder (under its name or the release's alias)."""
    return ALIASES.get(decoder["type"], decoder["type"]) == "allspark"


def model_section(cfg, crop, backbone=None, num_class=None, attention=None):
    """The config's model section for timing: random weights (they time the same), ``backbone`` (a preset,
    with its own keywords and the decoder's widths to match: for a DINOv2 or DINOv3 preset the DPT head of
    :data:`allspark.config.DPT_HEADS`, under ``dpt`` or AllSpark's ``head: dpt``), ``num_class``, AllSpark's
    ``attention`` path and S-Mem sized for ``crop``."""
    section = copy.deepcopy(cfg["model"])
    encoder, decoder = section["backbone"], section["decoder"]
    encoder.setdefault("kwargs", {})["pretrained"] = False
    if backbone:
        encoder["type"], encoder["kwargs"] = backbone, {"pretrained": False}
        kwargs = decoder["kwargs"]
        if backbone in MIT_PRESETS:
            kwargs["in_planes"] = list(MIT_PRESETS[backbone]["embed_dims"])
        else:
            if "in_planes" in kwargs:  # the allspark / segformer decoders on a ViT
                preset = VIT_PRESETS[backbone]
                kwargs["in_planes"] = [preset["embed_dim"]] * len(preset["layers"])
            if decoder["type"] == "dpt" or kwargs.get("head") == "dpt":
                features, out_channels = DPT_HEADS[backbone]
                kwargs.update(features=features, out_channels=list(out_channels))
    if num_class:
        decoder["kwargs"]["num_class"] = num_class
    if _is_allspark(decoder):
        if attention:
            decoder["kwargs"]["attention"] = attention
        decoder["kwargs"]["image_size"] = crop  # S-Mem is sized for the training crop
    return section


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def step_peak_memory_mb(fn, device):
    """The peak of the memory one call of ``fn`` allocates beyond what exists when it starts (MiB): on CUDA
    from ``max_memory_allocated``; on the CPU from torch.profiler's memory timeline (every tensor's
    creation and destruction), or None where that timeline is not available."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    # the profiler's C++ side (kineto) logs its start, stop and, without a GPU, a failed device query to
    # stderr at every use; level 6 keeps it quiet unless the user asked for its logs
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action  # (a private module: guarded, as its use below)

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            fn()
        timeline = prof._memory_profile().timeline
    except (ImportError, AttributeError, RuntimeError):
        return None
    current = peak = 0
    for _, action, _, size in sorted(timeline, key=lambda event: event[0]):
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return peak / 2 ** 20


# what makes the host wait for a tensor's value: reading it as a Python number, list or truth value
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")


class _HostReads(TorchFunctionMode):
    """Counts the calls of :data:`HOST_READS` made while it is active (torch's function-mode API)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_host_syncs(fn, device):
    """How often one call of ``fn`` makes the host wait for the device. On CUDA: the synchronising
    operations torch's sync-debug mode reports (it warns on each). Elsewhere: the reads of tensor values
    into Python (``.item()``, ``.tolist()``, truth values, ``int()``/``float()``, ``.numpy()``), each of
    which would be a synchronisation on a GPU, counted for this call only by a ``TorchFunctionMode``;
    operations whose output size depends on the data (boolean indexing, ``nonzero``) also synchronise on a
    GPU but are not counted on the CPU."""
    if device.type == "cuda":
        _sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)
    with _HostReads() as reads:
        fn()
    return reads.count


def _timed(fn, steps, warmup, device):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _summary(times, images):
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times), "images_per_s": images / median,
            "steps_s": times}


def synthetic_batch(method, batch, crop, num_class, device):
    """A training batch of random images shaped as the method's loaders yield it."""
    def images():
        return torch.randn(batch, 3, crop, crop, device=device)

    labeled = (images(), torch.randint(0, num_class, (batch, crop, crop), device=device))
    if method.unlabeled_mode is None:
        return labeled
    padded = torch.zeros(batch, crop, crop, dtype=torch.bool, device=device)
    if method.unlabeled_mode == "train_u":
        return labeled, {"img_w": images(), "padded": padded}
    box = torch.zeros(batch, crop, crop, device=device)
    box[:, crop // 4:crop // 2, crop // 4:3 * crop // 4] = 1  # 1/8 of the crop, as an average CutMix box
    return labeled, {"img_w": images(), "img_s1": images(), "img_s2": images(), "padded": padded, "box1": box,
                     "box2": box.clone()}


def build_trainer(args, device):
    """(the Trainer of ``args.config`` with the benchmark's overrides, stepping on one synthetic batch; that
    batch; the epoch to step in: from the decoder's ``warmup_epoch`` on AllSpark reads S-Mem, so
    ``--memory off`` steps in epoch 0, which reads it too where ``warmup_epoch`` is 0)."""
    cfg = load_training_config(args.config)
    crop = args.crop or cfg["crop_size"]
    section = model_section(cfg, crop, args.backbone, args.num_class, args.attention)
    warmup = section["decoder"]["kwargs"].get("warmup_epoch") if _is_allspark(section["decoder"]) else None
    epoch = warmup if warmup is not None and args.memory == "on" else 0
    cfg = {**cfg, "model": section, "crop_size": crop, "amp": args.amp or cfg["amp"],
           "compile": cfg["compile"] if args.compile is None else args.compile,
           "activation_checkpointing": (cfg["activation_checkpointing"] if args.activation_checkpointing is None
                                        else args.activation_checkpointing),
           "batch_size": args.batch_size or cfg["batch_size"], "epochs": max(cfg["epochs"], epoch + 1)}
    trainer = Trainer(cfg, DistEnv(device=device), loaders={"l": [None], "u": [None], "val": []})
    batch = synthetic_batch(trainer.method, cfg["batch_size"], crop, section["decoder"]["kwargs"]["num_class"], device)
    return trainer, batch, epoch


def run_benchmark(args):
    """Build the trainer, time ``args.steps`` training steps and eval forwards; return the results dict."""
    device = torch.device(args.device)
    trainer, batch, epoch = build_trainer(args, device)
    cfg, method, model, net = trainer.cfg, trainer.method, trainer.model, trainer.net
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    img_x = batch[0] if method.unlabeled_mode is None else batch[0][0]

    def step():
        trainer.step(batch, epoch, 0)

    @torch.no_grad()
    def eval_forward():
        net.eval()
        with autocast(device, cfg["amp"]):
            net(img_x)

    images_per_step = cfg["batch_size"] * (1 if method.unlabeled_mode is None else 2)  # labeled + unlabeled
    train_times = _timed(step, args.steps, args.warmup, device)
    train_peak = _peak_memory_mb(device)
    train_reserved = torch.cuda.max_memory_reserved(device) / 2 ** 20 if device.type == "cuda" else None
    step_peak = step_peak_memory_mb(step, device)
    host_syncs = count_host_syncs(step, device)
    eval_times = _timed(eval_forward, args.steps, args.warmup, device)
    decoder = cfg["model"]["decoder"]
    return {
        "config": args.config, "method": cfg["method"], "backbone": cfg["model"]["backbone"]["type"],
        "num_class": decoder["kwargs"]["num_class"], "crop": cfg["crop_size"], "batch_size": cfg["batch_size"],
        "unlabeled": method.unlabeled_mode is not None,
        "memory": args.memory if _is_allspark(decoder) else None, "amp": cfg["amp"],
        "compile": cfg["compile"], "activation_checkpointing": cfg["activation_checkpointing"], "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "attention": decoder["kwargs"].get("attention", DEFAULT_ATTENTION) if _is_allspark(decoder) else None,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_step": _summary(train_times, images_per_step), "train_peak_memory_mb": train_peak,
        "train_step_allocated_mb": step_peak, "train_peak_reserved_mb": train_reserved,
        "train_step_host_syncs": host_syncs,
        "eval_forward": _summary(eval_times, cfg["batch_size"]), "peak_memory_kind":
            "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Time the training step and eval forward of a config's model")
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default=None, choices=list(AMP_MODES), help="the config's amp by default")
    parser.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                        help="torch.compile the model (the config's compile by default)")
    parser.add_argument("--batch-size", type=int, default=None, help="per half (labeled and unlabeled); config's by default")
    parser.add_argument("--crop", type=int, default=None, help="square input size; the config's crop_size by default")
    parser.add_argument("--memory", default="on", choices=["on", "off"], help="S-Mem replaces keys and values")
    parser.add_argument("--backbone", default=None, choices=sorted(MIT_PRESETS) + sorted(VIT_PRESETS),
                        help="override the encoder (MiT presets for MiT configs, DINOv2 / DINOv3 presets for ViT ones)")
    parser.add_argument("--num-class", type=int, default=None, help="override the class count")
    parser.add_argument("--activation-checkpointing", default=None, action=argparse.BooleanOptionalAction,
                        help="recompute the encoder's blocks in backward (the config's activation_checkpointing by default)")
    parser.add_argument("--attention", default=None, choices=list(ATTENTION_PATHS),
                        help="AllSpark's attention path (the config's model.decoder.kwargs.attention by default)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    res = run_benchmark(args)
    t, e = res["train_step"], res["eval_forward"]
    print(f"{res['method']} {res['backbone']} K={res['num_class']} crop {res['crop']} batch {res['batch_size']}"
          f"{' + ' + str(res['batch_size']) if res['unlabeled'] else ''}"
          f"{' memory ' + res['memory'] if res['memory'] else ''}"
          f"{' attention ' + res['attention'] if res['attention'] else ''} amp {res['amp']}"
          f"{' compiled' if res['compile'] else ''}{' checkpointed' if res['activation_checkpointing'] else ''}"
          f" on {res['device']} ({res['threads']} threads)")
    print(f"train step : median {t['median_s']:.4f} s (min {t['min_s']:.4f}, max {t['max_s']:.4f}), "
          f"{t['images_per_s']:.1f} img/s, peak {res['train_peak_memory_mb']:.0f} MiB ({res['peak_memory_kind']})")
    if res["train_step_allocated_mb"] is not None:
        print(f"train step : {res['train_step_allocated_mb']:.0f} MiB allocated at its peak (the step's own tensors)")
    if res["train_peak_reserved_mb"] is not None:
        print(f"train step : {res['train_peak_reserved_mb']:.0f} MiB reserved at the peak (CUDA caching allocator)")
    print(f"train step : {res['train_step_host_syncs']} host synchronisations "
          f"({'sync-debug mode' if res['device'].startswith('cuda') else 'tensor values read into Python'})")
    print(f"eval fwd   : median {e['median_s']:.4f} s (min {e['min_s']:.4f}, max {e['max_s']:.4f}), "
          f"{e['images_per_s']:.1f} img/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
