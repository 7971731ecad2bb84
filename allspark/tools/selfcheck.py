"""The self-check to run first on a new machine: ``python -m allspark.selfcheck [--device cuda|cpu] [--quick]
[--out report.json]``.

In a temporary folder it checks what training on this machine relies on, and prints one table (check,
result, figure) with the settings it recommends; the exit status is 1 when any check fails (the table names
it), 0 otherwise:

- **environment**: torch, CUDA, cuDNN, NCCL and timm versions, every visible GPU and its memory, and whether
  this torch meets the project's floors (training, ``compile``, CPU fp16, bf16);
- **numerics** of each model family (AllSpark on MiT, UniMatch V2's DINOv2 + DPT, DINOv3 + DPT; tiny random
  models): forward, gradients (and S-Mem for AllSpark) on the device against a float64 copy on the CPU, in
  fp32 with TF32 off (:data:`FP32_RTOL`) and under bf16 autocast (:data:`BF16_RTOL`); AllSpark's fused
  attention against the exact one on the device, and the fused path's dropout masks drawn again in backward;
- **training** through the real trainer on generated toy data, each method with amp none and bf16: a run
  stopped mid-epoch with a checkpoint and resumed ends with the same model, EMA teacher, S-Mem and optimizer
  as an uninterrupted run (bitwise where the device repeats itself bitwise, as CPUs do; on a device whose
  kernels add in varying order, within the spread of two uninterrupted runs); the compiled step (where the
  torch meets the compile floor; not with ``--quick``) against the eager one;
- **distributed** (with more than one GPU, or ``--world-size N`` on the CPU): one process per device under
  torchrun (NCCL on CUDA, gloo on CPU): an all-reduce, a DDP step (parameters equal on every rank after it;
  SyncBatchNorm statistics equal on CUDA) and S-Mem after a step in both ``memory_sync`` modes;
- **timings** of the shipped configs' models at their real crops (AllSpark MiT-B5 at 513 with 21 and 81
  classes, UniMatch V2 DINOv2-S at 518; fp32 and bf16; exact and fused attention) with the benchmark's
  training step: step time, images / s, peak allocated and reserved memory; ``--quick`` times one small
  model instead.
"""
import argparse
import contextlib
import copy
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ..compat import COMPILE_FLOOR, TORCH_FLOOR, torch_older_than
from ..config import PROJECT_ROOT, make_training_config
from ..data.toy import make_toy_dataset
from ..engine.cluster import StopRequest, watch_parent
from ..engine.dist import DistEnv, broadcast_buffers, cleanup, gather_objects, resolve_env
from ..engine.trainer import Trainer
from ..models import build_model
from ..models.attention import ChunkedAttention
from . import benchmark

__all__ = ["Row", "Report", "FAMILIES", "FP32_RTOL", "BF16_RTOL", "environment", "numerics", "attention_paths",
           "training", "distributed", "distributed_worker", "ddp_step_rows", "timings", "recommendations",
           "run_selfcheck", "main"]

logger = logging.getLogger("allspark")

# Largest error allowed, ||ours - reference|| / ||reference|| of each compared tensor: fp32 (TF32 off) against
# float64 is rounding only, far below FP32_RTOL; bf16 keeps 8 bits of mantissa (4e-3 per operation), and its
# rounding compounds through the layers, most in the gradients, which BF16_RTOL leaves room for; a wrong
# gradient is off by about 1 or more.
FP32_RTOL = 1e-4
BF16_RTOL = 0.3
GRAD_FLOOR = 1e-2
PASS, FAIL, SKIP, INFO = "pass", "FAIL", "skip", "info"


@dataclass
class Row:
    """One line of the report: the check, its result (pass / FAIL / skip / info) and its figure."""
    section: str
    check: str
    result: str
    figure: str = ""


class Report:
    """The rows so far; :meth:`run` adds the rows of one check function and turns its crash into a FAIL."""

    def __init__(self):
        self.rows: List[Row] = []
        self.data: Dict[str, object] = {}

    def add(self, section, check, result, figure=""):
        self.rows.append(Row(section, check, result, figure))
        print(f"  {result:4}  {section}: {check}  {figure}", flush=True)

    def run(self, section, fn, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:  # one broken check must not hide the others
            self.add(section, f"{getattr(fn, '__name__', fn)} crashed", FAIL, f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
            return None

    @property
    def failed(self) -> List[Row]:
        return [r for r in self.rows if r.result == FAIL]

    def table(self) -> str:
        widths = [max(len(getattr(r, k)) for r in self.rows + [Row("section", "check", "result", "figure")])
                  for k in ("section", "check", "result")]
        lines = [f"{'section':{widths[0]}}  {'check':{widths[1]}}  {'result':{widths[2]}}  figure"]
        lines.append("-" * (sum(widths) + 14))
        lines += [f"{r.section:{widths[0]}}  {r.check:{widths[1]}}  {r.result:{widths[2]}}  {r.figure}" for r in self.rows]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], **self.data, "failed": [r.check for r in self.failed]}


# ---- tiny models, one per family ------------------------------------------------------------------------

_MIT = {"type": "mit", "kwargs": {"embed_dims": [16, 32, 40, 64], "num_heads": [1, 2, 5, 8], "depths": [1, 1, 1, 1],
                                  "drop_path_rate": 0.0}}
_VIT = {"embed_dim": 48, "depth": 4, "num_heads": 2, "layers": [0, 1, 2, 3]}
_DPT = {"features": 16, "out_channels": [8, 16, 32, 32]}
NUM_CLASS = 5


def _allspark_model(attention="fused", crop=65):
    return {"backbone": copy.deepcopy(_MIT),
            "decoder": {"type": "allspark", "kwargs": {"num_class": NUM_CLASS, "in_planes": [16, 32, 40, 64],
                                                       "num_heads": 2, "image_size": crop, "warmup_epoch": 1,
                                                       "embedding_dim": 32, "attention": attention}}}


def _dpt_model(encoder):
    return {"backbone": {"type": encoder, "kwargs": dict(_VIT)},
            "decoder": {"type": "dpt", "kwargs": {"num_class": NUM_CLASS, **copy.deepcopy(_DPT)}}}


# name -> (model section, training crop, method trained with it)
FAMILIES = {
    "AllSpark / MiT": (_allspark_model(), 65, "allspark"),
    "UniMatch V2 / DINOv2 + DPT": (_dpt_model("dinov2"), 70, "unimatch_v2"),
    "DINOv3 + DPT": (_dpt_model("dinov3"), 64, "unimatch_v2"),
}


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.p = 0.0
    return model


@contextlib.contextmanager
def _tf32(enabled):
    """TF32 matmuls and convolutions on or off (CUDA), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _worst(ours: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor]):
    """(largest relative error ||ours - ref|| / ||ref|| (L2 norms) over the tensors, the tensor's name); for a
    gradient the denominator is at least :data:`GRAD_FLOOR` of the largest reference gradient's norm: a
    gradient that is zero in exact arithmetic (a bias before BatchNorm) holds rounding noise only. A tensor
    missing in ``ours`` (no gradient) counts as error 1."""
    grads = [r.detach().double().norm().item() for k, r in ref.items() if k.startswith("grad")]
    floor = GRAD_FLOOR * max(grads, default=0.0)
    worst, name = 0.0, ""
    for key, r in ref.items():
        o = ours.get(key)
        if o is None:
            err = 1.0
        else:
            r64 = r.detach().double().cpu()
            scale = max(r64.norm().item(), floor if key.startswith("grad") else 0.0, 1e-30)
            err = (o.detach().double().cpu() - r64).norm().item() / scale
        if not err <= worst:  # (NaN wins)
            worst, name = err, key
    return worst, name


def _outputs(model, section, crop, device, amp, use_memory=True, seed=0):
    """Logits, every parameter's gradient of sum(logits * proj) and (AllSpark) S-Mem after one train-mode
    forward of the tiny ``model`` on fixed inputs (dropout off); AllSpark runs labeled + unlabeled with fixed
    pseudo logits and reads S-Mem when ``use_memory``."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    allspark = section["decoder"]["type"] == "allspark"
    batch = 4 if allspark else 2
    x = torch.randn(batch, 3, crop, crop, generator=g, dtype=torch.float64).to(device, dtype)
    kwargs = {}
    if allspark:
        kwargs = {"pseudo_logits": torch.randn(batch // 2, NUM_CLASS, crop, crop, generator=g,
                                               dtype=torch.float64).to(device, dtype), "use_memory": use_memory}
    proj = torch.randn(batch, NUM_CLASS, crop, crop, generator=g, dtype=torch.float64).to(device, dtype)
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16", cache_enabled=False):
        logits = model(x, **kwargs)
    (logits.to(dtype) * proj).sum().backward()
    out = {"logits": logits}
    out.update({f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    if allspark:
        out["S-Mem"] = model.decoder.allspark.attn.kv_queue
    return out


def _models(section, device, seed=0):
    """(the tiny model of ``section`` in float64 on the CPU, the same weights in fp32 on ``device``)."""
    torch.manual_seed(seed)
    ref = _no_dropout(build_model(section)).double()
    return ref, copy.deepcopy(ref).float().to(device)


def numerics(report: Report, device: torch.device, families=None, amps=("none", "bf16")):
    """Each family's forward, gradients and S-Mem on ``device`` against float64 on the CPU. Under bf16,
    AllSpark's forward attends over its own batch rather than S-Mem, and S-Mem is not compared: the channel
    grouping that fills it is an argmax of cosine similarities, which bf16's rounding may flip at near ties."""
    for name, (section, crop, _) in (families or FAMILIES).items():
        for amp in amps:
            label = "fp32 (TF32 off)" if amp == "none" else "bf16 autocast"
            if amp == "bf16" and not _bf16_supported(device):
                report.add("numerics", f"{name}, {label}", SKIP, "bf16 not supported on this device")
                continue
            ref_model, model = _models(section, device)
            ref = _outputs(ref_model, section, crop, torch.device("cpu"), "none", use_memory=amp == "none")
            with _tf32(False):
                ours = _outputs(model, section, crop, device, amp, use_memory=amp == "none")
            if amp != "none":
                ref.pop("S-Mem", None)
            err, where = _worst(ours, ref)
            tol = FP32_RTOL if amp == "none" else BF16_RTOL
            report.add("numerics", f"{name}, {label} vs CPU float64", PASS if err <= tol else FAIL,
                       f"worst {err:.2e} relative ({where}; tolerance {tol:g}, {len(ref)} tensors)")


def attention_paths(report: Report, device: torch.device):
    """AllSpark's fused attention against the exact one on ``device`` (fp32, S-Mem read), and the fused
    path's dropout: masks drawn again in backward give the stored masks' output and gradients, and the
    regenerating backward is the exact gradient (float64 gradcheck on the device)."""
    outs = {}
    for attention in ("exact", "fused"):
        torch.manual_seed(0)
        section = _allspark_model(attention)
        model = _no_dropout(build_model(section)).to(device)
        with _tf32(False):
            outs[attention] = _outputs(model, section, 65, device, "none")
    err, where = _worst(outs["fused"], outs["exact"])
    report.add("attention", "fused vs exact (fp32, S-Mem read)", PASS if err <= FP32_RTOL else FAIL,
               f"worst {err:.2e} relative ({where}; tolerance {FP32_RTOL:g})")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(*shape, generator=g).to(device).requires_grad_() for shape in ((96, 8), (300, 8), (300, 6)))
    grad_out = torch.randn(96, 6, generator=g).to(device)
    results = []
    for store in (True, False):
        out = ChunkedAttention.apply(q, k, v, 0.1, 1234, store)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
    err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(results[1], results[0]))
    report.add("attention", "dropout masks drawn again in backward = stored masks", PASS if err <= 1e-6 else FAIL,
               f"worst {err:.2e} relative (output and 3 gradients)")
    q64, k64, v64 = (t.detach()[:6, :3].double().requires_grad_() for t in (q, k, v))
    ok = torch.autograd.gradcheck(lambda a, b, c: ChunkedAttention.apply(a, b, c, 0.3, 99, False), (q64, k64, v64),
                                  raise_exception=False)
    report.add("attention", "dropout backward is the exact gradient (float64 gradcheck)", PASS if ok else FAIL,
               "gradcheck " + ("passed" if ok else "failed"))


# ---- training through the trainer -----------------------------------------------------------------------

TOY_UNLABELED = 4


class StopAfter(StopRequest):
    """A stop request that fires once ``count`` steps and evaluations have been recorded (a preemption at a
    known point of the run)."""

    def __init__(self, count):
        super().__init__()
        self.count, self.seen = count, 0

    def took(self, seconds):
        super().took(seconds)
        self.seen += 1

    def reason(self):
        return "selfcheck: stop" if self.seen >= self.count else None


def toy_data(root: Path) -> SimpleNamespace:
    """A small generated toy dataset: 4 labeled, 4 unlabeled, 1 validation image."""
    lists = make_toy_dataset(root, seed=1, num_train=TOY_UNLABELED + 4, num_val=1, num_labeled=4, min_size=64,
                             max_size=80)
    return SimpleNamespace(root=root, **{k: str(v) for k, v in lists.items()})


def training_config(method, family, data, amp, compile_=False, epochs=2):
    """A checked training config of ``method`` on the tiny model of ``family`` and the toy data."""
    section, crop, _ = FAMILIES[family]
    raw = {"method": method, "dataset": "toy", "data_root": str(data.root), "val_id_path": data.val, "nclass": NUM_CLASS,
           "crop_size": crop, "epochs": epochs, "batch_size": 2, "lr": 0.005 if method == "allspark" else 0.0002,
           "lr_multi": 10.0, "criterion": {"name": "CELoss", "kwargs": {"ignore_index": 255}}, "num_workers": 0,
           "amp": amp, "compile": compile_, "model": copy.deepcopy(section)}
    if method == "unimatch_v2":
        raw["conf_thresh"] = 0.5
    return make_training_config(raw, source=f"selfcheck {method}")


def _fit(cfg, data, save_path, device, stop=None):
    """Train (or resume) ``cfg`` in ``save_path``; returns the exit status (0, or 3 when stopped)."""
    trainer = Trainer(cfg, DistEnv(device=device), save_path=save_path, labeled_list=data.labeled,
                      unlabeled_list=data.unlabeled, seed=0, stop=stop)
    try:
        trainer.fit()
        return 0
    except SystemExit as exc:
        return exc.code
    finally:
        trainer.close()


def final_state(save_path) -> Dict[str, torch.Tensor]:
    """Every tensor of a run's ``latest.pth``: model (S-Mem included), EMA teacher, optimizer state."""
    ckpt = torch.load(Path(save_path) / "latest.pth", map_location="cpu", weights_only=False)
    out = {}
    for entry in ("model", "model_ema"):
        out.update({f"{entry} {k}": v for k, v in ckpt.get(entry, {}).items()})
    for i, state in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer {i} {k}": v for k, v in state.items() if torch.is_tensor(v)})
    return out


def _largest_difference(a, b):
    if a.keys() != b.keys():
        return float("inf")
    return max(((x.double() - y.double()).abs().max().item() if x.numel() else 0.0) for x, y in
               ((a[k], b[k]) for k in a))


def training(report: Report, device: torch.device, tmp: Path, quick: bool, runs=None, amps=("none", "bf16")):
    """Each method on the toy data through :class:`Trainer`: stop after the first step of epoch 1, resume,
    compare with an uninterrupted run; the compiled run against the eager one."""
    data = toy_data(tmp / "toy")
    runs = runs or [("allspark", "AllSpark / MiT"), ("unimatch_v2", "UniMatch V2 / DINOv2 + DPT")]
    for method, family in runs:
        for amp in amps:
            if amp == "bf16" and not _bf16_supported(device):
                report.add("training", f"{method}, bf16", SKIP, "bf16 not supported on this device")
                continue
            cfg = training_config(method, family, data, amp)
            base = tmp / f"{method}_{amp}"
            start = time.perf_counter()
            _fit(cfg, data, base / "straight", device)
            took = time.perf_counter() - start
            straight = final_state(base / "straight")
            iters = TOY_UNLABELED // cfg["batch_size"]  # iterations per epoch
            status = _fit(cfg, data, base / "resumed", device, stop=StopAfter(iters + 2))
            stopped = (base / "resumed" / "latest.pth").is_file()
            _fit(cfg, data, base / "resumed", device)
            diff = _largest_difference(final_state(base / "resumed"), straight)
            spread = 0.0
            if diff > 0 and device.type != "cpu":  # how far two uninterrupted runs on this device land apart
                _fit(cfg, data, base / "again", device)
                spread = _largest_difference(final_state(base / "again"), straight)
            ok = status == 3 and stopped and (diff == 0 or diff <= max(4 * spread, 0.0))
            how = "bitwise" if diff == 0 else f"largest difference {diff:.2e} (two uninterrupted runs: {spread:.2e})"
            report.add("training", f"{method}, amp {amp}: stopped mid-epoch, resumed = uninterrupted",
                       PASS if ok else FAIL, f"{how}; {took:.1f} s per run" + ("" if status == 3 else f"; stop status {status}"))
        if quick:
            continue
        if torch_older_than(COMPILE_FLOOR):
            report.add("training", f"{method}, compile", SKIP, f"torch {torch.__version__} < {COMPILE_FLOOR}")
            continue
        start = time.perf_counter()
        eager_losses, eager_state = _steps(method, family, data, device, compile_=False)
        losses, state = _steps(method, family, data, device, compile_=True)
        took = time.perf_counter() - start
        err, where = _worst({"losses": losses, **state}, {"losses": eager_losses, **eager_state})
        report.add("training", f"{method}, compiled steps vs eager (3 steps{', S-Mem read' if method == 'allspark' else ''})", PASS if err <= 1e-3 else FAIL,
                   f"worst {err:.2e} relative ({where}; tolerance 1e-3); {took:.0f} s with compilation")


def _steps(method, family, data, device, compile_, steps=3):
    """(the logged losses of ``steps`` trainer steps in epoch 1, the model's floating-point state after them)
    of the tiny model with its dropout off (a compiled graph draws other dropout masks than eager code)."""
    cfg = training_config(method, family, data, "none", compile_=compile_)
    torch.manual_seed(0)
    model = _no_dropout(build_model(cfg["model"]))
    trainer = Trainer(cfg, DistEnv(device=device), model=model, loaders={"l": [None] * steps, "u": [None] * steps,
                                                                         "val": []})
    try:
        torch.manual_seed(1)
        batch = benchmark.synthetic_batch(trainer.method, cfg["batch_size"], cfg["crop_size"], NUM_CLASS, device)
        losses = torch.stack([trainer.step(batch, 1, i) for i in range(steps)])
        state = {f"model {k}": v for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
        return losses, state
    finally:
        trainer.close()


# ---- several processes ----------------------------------------------------------------------------------

def distributed(report: Report, device: torch.device, world_size: int, tmp: Path):
    """One process per device under torchrun: the checks of :func:`distributed_worker`, read back."""
    out = tmp / "distributed.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world_size}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "allspark.selfcheck", "--device", device.type,
           "--distributed-worker", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(PROJECT_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - start
    if proc.returncode or not out.is_file():
        report.add("distributed", f"torchrun, {world_size} processes", FAIL,
                   f"exit status {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}")
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        return
    for row in json.loads(out.read_text()):
        report.add("distributed", row["check"], row["result"], row["figure"])
    report.add("distributed", f"torchrun, {world_size} processes ({'NCCL' if device.type == 'cuda' else 'gloo'})",
               PASS, f"{took:.1f} s with start-up")


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _equal_on_every_rank(tensors: Dict[str, torch.Tensor]) -> bool:
    """Whether every process holds the same ``tensors`` (bitwise)."""
    mine = {k: v.detach().cpu() for k, v in tensors.items()}
    everyone = gather_objects(mine)
    return all(torch.equal(other[k], mine[k]) for other in everyone for k in mine)


def distributed_worker(device_type: str, out: Path) -> int:
    """One rank of :func:`distributed` (started by torchrun): writes the rows to ``out`` on rank 0."""
    import torch.distributed as dist

    env = resolve_env()
    watch_parent()  # a killed launcher (the self-check's timeout) must not leave this rank waiting for the others
    if device_type == "cuda":
        env.device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(env.device)
        env.backend = "nccl"
    dist.init_process_group(env.backend, init_method="env://", rank=env.rank, world_size=env.world_size)
    rows = []
    try:
        value = torch.tensor([env.rank + 1.0], device=env.device)
        dist.all_reduce(value)
        expected = env.world_size * (env.world_size + 1) / 2
        rows.append({"check": "all-reduce", "result": PASS if value.item() == expected else FAIL,
                     "figure": f"sum {value.item():g} (expected {expected:g})"})
        for sync in ("gather", "broadcast"):
            rows += ddp_step_rows(env, sync)
    finally:
        if env.rank == 0:
            out.write_text(json.dumps(rows))
        cleanup()
    return 0


def ddp_step_rows(env: DistEnv, sync: str) -> List[dict]:
    """Two DDP training steps of the tiny AllSpark model (SegFormer head: BatchNorm) with each rank's own
    batch, S-Mem read: parameters and (SyncBatchNorm, CUDA) BatchNorm statistics equal on every rank; S-Mem
    equal on every rank after the step with ``memory_sync: gather``, and with ``broadcast`` (the release)
    each rank's own until DDP's buffer broadcast, then rank 0's."""
    cfg = make_training_config({
        "method": "allspark", "dataset": "toy", "data_root": ".", "val_id_path": "val.txt", "nclass": NUM_CLASS,
        "crop_size": 65, "epochs": 2, "batch_size": 2, "lr": 0.005, "lr_multi": 10.0, "memory_sync": sync,
        "criterion": {"name": "CELoss", "kwargs": {"ignore_index": 255}}, "num_workers": 0,
        "model": _allspark_model()}, source="selfcheck distributed")
    trainer = Trainer(cfg, env, loaders={"l": [None] * 2, "u": [None] * 2, "val": []})
    torch.manual_seed(100 + env.rank)  # each rank its own images
    batch = benchmark.synthetic_batch(trainer.method, 2, 65, NUM_CLASS, env.device)
    for i in range(2):
        trainer.step(batch, epoch=1, i=i)  # epoch 1: S-Mem is read (warmup_epoch 1)
    model = trainer.model
    params = {n: p for n, p in model.named_parameters()}
    bn = {n: b for n, b in model.named_buffers() if "running" in n}
    memory = {n: b for n, b in model.named_buffers() if "kv_queue" in n or "queue_ptr" in n}
    rows = [{"check": f"DDP step ({sync}): parameters equal on every rank",
             "result": PASS if _equal_on_every_rank(params) else FAIL, "figure": f"{len(params)} tensors"}]
    if env.device.type == "cuda":
        rows.append({"check": f"DDP step ({sync}): SyncBatchNorm statistics equal on every rank",
                     "result": PASS if _equal_on_every_rank(bn) else FAIL, "figure": f"{len(bn)} tensors"})
    same = _equal_on_every_rank(memory)
    if sync == "gather":
        rows.append({"check": "S-Mem after a step (memory_sync: gather): equal on every rank",
                     "result": PASS if same else FAIL, "figure": "bitwise" if same else "differs"})
    else:
        broadcast_buffers(model)
        after = _equal_on_every_rank(memory)
        ok = after and not same
        rows.append({"check": "S-Mem after a step (memory_sync: broadcast): each rank's own, rank 0's after the "
                              "buffer broadcast", "result": PASS if ok else FAIL,
                     "figure": f"{'differ' if not same else 'equal'} after the step, {'equal' if after else 'differ'} "
                               f"after the broadcast"})
    trainer.close()
    return rows


# ---- timings ----------------------------------------------------------------------------------------------

# (label, config, benchmark overrides); AllSpark's rows run with each attention path
TIMED = [
    ("AllSpark MiT-B5 513, 21 classes", "configs/pascal_allspark.yaml", {}),
    ("AllSpark MiT-B5 513, 81 classes", "configs/coco_allspark.yaml", {}),
    ("UniMatch V2 DINOv2-S 518", "configs/pascal_unimatch_v2.yaml", {}),
]
QUICK_TIMED = [("AllSpark MiT-B0 129, 21 classes (quick)", "configs/pascal_allspark.yaml",
                {"backbone": "mit_b0", "crop": 129, "batch_size": 1})]


def timings(report: Report, device: torch.device, quick: bool, steps=5, warmup=2):
    """The benchmark's training step (and peak memory) of the shipped configs' models on ``device``."""
    results = []
    amps = ["none"] + (["bf16"] if _bf16_supported(device) else [])
    for label, config, overrides in (QUICK_TIMED if quick else TIMED):
        path = PROJECT_ROOT / config
        if not path.is_file():
            report.add("timings", label, SKIP, f"{path} not found")
            continue
        allspark = "allspark" in config
        for amp in (amps[:1] if quick else amps):
            for attention in (("exact", "fused") if allspark else (None,)):
                args = SimpleNamespace(config=str(path), steps=1 if quick else steps, warmup=1 if quick else warmup,
                                       device=device.type, amp=amp, compile=False, batch_size=None, crop=None,
                                       memory="on", backbone=None, num_class=None, activation_checkpointing=None,
                                       attention=attention, out=None)
                vars(args).update(overrides)
                name = f"{label}, {'fp32' if amp == 'none' else amp}" + (f", {attention}" if attention else "")
                try:
                    res = benchmark.run_benchmark(args)
                except torch.cuda.OutOfMemoryError as exc:
                    report.add("timings", name, INFO, f"out of memory: {str(exc).splitlines()[0]}")
                    continue
                except Exception as exc:  # the other rows still run
                    report.add("timings", name, FAIL, f"{type(exc).__name__}: {exc}")
                    traceback.print_exc()
                    continue
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                t = res["train_step"]
                memory = (f"peak {res['train_peak_memory_mb'] / 1024:.1f} GiB allocated, "
                          f"{res['train_peak_reserved_mb'] / 1024:.1f} GiB reserved" if device.type == "cuda"
                          else f"step allocates {res['train_step_allocated_mb'] or 0:.0f} MiB")
                report.add("timings", name, INFO, f"{t['median_s']:.3f} s/step, {t['images_per_s']:.1f} img/s "
                                                  f"(batch {res['batch_size']} + {res['batch_size']}), {memory}")
                results.append({"label": label, "amp": amp, "attention": attention, **{
                    k: res[k] for k in ("batch_size", "crop", "num_class", "train_peak_memory_mb",
                                        "train_peak_reserved_mb", "train_step_allocated_mb")},
                    "step_s": t["median_s"], "images_per_s": t["images_per_s"]})
    report.data["timings"] = results
    return results


def recommendations(report: Report, device: torch.device, results: List[dict]):
    """Settings for this device, from the timings: the faster attention path per class count, bf16 where it
    is faster, and how much of the device's memory the shipped batch uses."""
    by = {(r["label"], r["amp"], r["attention"]): r for r in results}
    for label in sorted({r["label"] for r in results if r["attention"]}):
        for amp in ("none", "bf16"):
            exact, fused = by.get((label, amp, "exact")), by.get((label, amp, "fused"))
            if exact and fused:
                faster = "exact" if exact["step_s"] < fused["step_s"] else "fused"
                report.add("recommend", f"{label}, {'fp32' if amp == 'none' else amp}: attention: {faster}", INFO,
                           f"exact {exact['step_s']:.3f} s / fused {fused['step_s']:.3f} s per step; peak memory "
                           f"{_mib(exact, device)} / {_mib(fused, device)}")
    for label in sorted({r["label"] for r in results}):
        fp32 = [r for r in results if r["label"] == label and r["amp"] == "none"]
        bf16 = [r for r in results if r["label"] == label and r["amp"] == "bf16"]
        if fp32 and bf16:
            a, b = min(r["step_s"] for r in fp32), min(r["step_s"] for r in bf16)
            report.add("recommend", f"{label}: amp: {'bf16' if b < 0.9 * a else 'none'}", INFO,
                       f"fastest fp32 {a:.3f} s, bf16 {b:.3f} s per step")
    if device.type == "cuda" and results:
        total = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        top = max(results, key=lambda r: r["train_peak_reserved_mb"] or 0)
        report.add("recommend", "memory", INFO, f"largest peak {top['train_peak_reserved_mb'] / 1024:.1f} GiB reserved "
                                                f"of {total:.0f} GiB ({top['label']}, batch {top['batch_size']} + "
                                                f"{top['batch_size']} per GPU)")


def _mib(row, device):
    value = row["train_peak_reserved_mb"] if device.type == "cuda" else row["train_step_allocated_mb"]
    return f"{(value or 0) / 1024:.1f} GiB"


# ---- environment ------------------------------------------------------------------------------------------

def _bf16_supported(device):
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True


def environment(report: Report, device: torch.device) -> dict:
    """Versions, devices and the torch floors this machine meets."""
    import timm

    info = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None, "nccl": None, "gpus": [], "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        with contextlib.suppress(Exception):
            version = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2 ** 30, 1),
                                 "capability": f"{p.major}.{p.minor}"})
    report.data["environment"] = info
    report.add("environment", "versions", INFO, f"python {info['python']}, torch {info['torch']}, timm {info['timm']}, "
                                                f"CUDA {info['cuda']}, cuDNN {info['cudnn']}, NCCL {info['nccl']}")
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in info["gpus"])
    report.add("environment", "devices", INFO, f"{len(info['gpus'])} GPU(s): {gpus}" if gpus else
               f"no GPU; CPU {info['cpu']}, {info['threads']} threads")
    if device.type == "cuda" and not torch.cuda.is_available():
        report.add("environment", "CUDA available", FAIL, "--device cuda, but torch sees no GPU "
                                                          f"(torch built for CUDA {torch.version.cuda})")
    report.add("environment", f"torch >= {TORCH_FLOOR} (training)", FAIL if torch_older_than(TORCH_FLOOR) else PASS,
               torch.__version__)
    report.add("environment", f"torch >= {COMPILE_FLOOR} (compile: true)", INFO if torch_older_than(COMPILE_FLOOR)
               else PASS, "compile refused on this torch" if torch_older_than(COMPILE_FLOOR) else "")
    if device.type == "cpu":
        report.add("environment", "torch >= 2.3 (amp: fp16 on the CPU)", INFO if torch_older_than("2.3") else PASS, "")
    else:
        report.add("environment", "bf16 on this GPU", PASS if _bf16_supported(device) else INFO,
                   "" if _bf16_supported(device) else "use amp: fp16 or none")
    return info


# ---- the run ----------------------------------------------------------------------------------------------

def run_selfcheck(device: torch.device, quick: bool = False, world_size: Optional[int] = None,
                  sections: Optional[List[str]] = None) -> Report:
    """Every check (or those of ``sections``) on ``device``; returns the report."""
    report = Report()
    wanted = set(sections or SECTIONS)
    environment(report, device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return report
    if world_size is None:
        world_size = torch.cuda.device_count() if device.type == "cuda" else 1
    with tempfile.TemporaryDirectory(prefix="allspark-selfcheck-") as tmp:
        tmp = Path(tmp)
        if "numerics" in wanted:
            report.run("numerics", numerics, device)
            report.run("attention", attention_paths, device)
        if "timings" in wanted:
            results = report.run("timings", timings, device, quick)
            if results:
                report.run("recommend", recommendations, device, results)
        if "training" in wanted:
            report.run("training", training, device, tmp, quick)
        if "distributed" in wanted:
            if world_size > 1:
                report.run("distributed", distributed, device, world_size, tmp)
            else:
                report.add("distributed", "several processes", SKIP,
                           "one GPU" if device.type == "cuda" else "one process (--world-size N to check N gloo processes)")
    return report


SECTIONS = ("numerics", "timings", "training", "distributed")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m allspark.selfcheck",
                                     description="Check this machine for training: numerics, the trainer, resume, "
                                                 "several processes, timings; one table, exit status 1 on a failure")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="skip compile and time one small model (about 15 s on a CPU)")
    parser.add_argument("--world-size", type=int, default=None,
                        help="processes for the distributed checks (default: the GPU count; 1 on the CPU)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None, help="run these sections only")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--distributed-worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.distributed_worker:
        return distributed_worker(args.device, Path(args.distributed_worker))
    logging.getLogger("allspark").setLevel(logging.WARNING)  # the trainer's progress lines: not wanted here
    device = torch.device(args.device)
    print(f"allspark self-check on {device}{' (quick)' if args.quick else ''}", flush=True)
    start = time.perf_counter()
    report = run_selfcheck(device, args.quick, args.world_size, args.only)
    report.data["seconds"] = round(time.perf_counter() - start, 1)
    print("\n" + report.table())
    failed = report.failed
    print(f"\n{len(report.rows)} rows in {report.data['seconds']} s: "
          + (f"{len(failed)} FAILED: " + "; ".join(f"{r.section}: {r.check}" for r in failed) if failed else "all checks passed"))
    if args.out:
        Path(args.out).write_text(json.dumps(report.to_json(), indent=2))
    return 1 if failed else 0
