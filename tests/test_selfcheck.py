"""The self-check's checks pass on this machine and fail when what they check is broken: a kernel whose fp32
gradient is wrong, a fused attention whose backward is wrong or whose dropout masks are not drawn again
alike, a resume that loses the optimizer's momentum, S-Mem that is not gathered across processes."""
import json

import pytest
import torch
import torch.multiprocessing as mp

import allspark.models.allspark as allspark_module
from allspark.engine.dist import DistEnv
from allspark.models import attention as A
from allspark.tools import selfcheck as S

from helpers import free_port

CPU = torch.device("cpu")
ONE_FAMILY = {"DINOv3 + DPT": S.FAMILIES["DINOv3 + DPT"]}


def results(report, section=None):
    return {r.check: r.result for r in report.rows if section is None or r.section == section}


class _WrongFp32Gradient(torch.autograd.Function):
    """Identity forward; backward doubles the gradient: a float32 kernel with a wrong gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_numerics_pass_here_in_fp32_and_bf16():
    report = S.Report()
    S.numerics(report, CPU)
    rows = results(report, "numerics")
    assert len(rows) == 2 * len(S.FAMILIES) and set(rows.values()) == {S.PASS}, rows


def test_numerics_fail_on_a_wrong_fp32_gradient(monkeypatch):
    build = S.build_model

    def broken(section):
        model = build(section)
        model.backbone.register_forward_hook(
            lambda m, i, out: [(_WrongFp32Gradient.apply(t) if t.dtype == torch.float32 else t) for t in out])
        return model

    monkeypatch.setattr(S, "build_model", broken)
    report = S.Report()
    S.numerics(report, CPU, ONE_FAMILY, amps=("none",))
    (row,) = report.rows
    assert row.result == S.FAIL and "grad backbone" in row.figure, row


def test_attention_checks_pass_here():
    report = S.Report()
    S.attention_paths(report, CPU)
    assert set(results(report).values()) == {S.PASS}, report.rows


def test_attention_checks_fail_on_a_wrong_fused_backward(monkeypatch):
    backward = A.ChunkedAttention.backward

    def wrong(ctx, grad_out):
        grad_q, *rest = backward(ctx, grad_out)
        return (1.5 * grad_q, *rest)

    monkeypatch.setattr(A.ChunkedAttention, "backward", staticmethod(wrong))
    report = S.Report()
    S.attention_paths(report, CPU)
    rows = results(report)
    assert rows["fused vs exact (fp32, S-Mem read)"] == S.FAIL
    assert rows["dropout backward is the exact gradient (float64 gradcheck)"] == S.FAIL


def test_attention_check_fails_when_backward_draws_other_masks(monkeypatch):
    draws = iter(range(10 ** 6))
    generator = A._generator
    monkeypatch.setattr(A, "_generator", lambda seed, device: generator(seed + next(draws), device))
    report = S.Report()
    S.attention_paths(report, CPU)
    assert results(report)["dropout masks drawn again in backward = stored masks"] == S.FAIL


RESUME = "allspark, amp none: stopped mid-epoch, resumed = uninterrupted"


def test_a_resumed_run_is_checked_bitwise(tmp_path):
    report = S.Report()
    S.training(report, CPU, tmp_path, quick=True, runs=[("allspark", "AllSpark / MiT")], amps=("none",))
    row = report.rows[0]
    assert (row.check, row.result) == (RESUME, S.PASS) and row.figure.startswith("bitwise"), row


def test_a_resume_that_loses_the_optimizer_state_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim.SGD, "load_state_dict", lambda self, state: None)  # momentum starts at zero
    report = S.Report()
    S.training(report, CPU, tmp_path, quick=True, runs=[("allspark", "AllSpark / MiT")], amps=("none",))
    row = report.rows[0]
    assert (row.check, row.result) == (RESUME, S.FAIL) and "largest difference" in row.figure, row


def _ddp_worker(rank, port, broken, out):
    import torch.distributed as dist

    if broken:  # every process enqueues only its own batch, whatever memory_sync says
        allspark_module._gather_from_all_ranks = lambda x: x
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = S.ddp_step_rows(DistEnv(rank=rank, world_size=2), "gather")
    finally:
        dist.destroy_process_group()
    if rank == 0:
        out.update({r["check"]: r["result"] for r in rows})


@pytest.mark.parametrize("broken", [False, True], ids=["gathered", "not gathered"])
def test_s_mem_gather_is_checked_across_processes(broken):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(free_port(), broken, out), nprocs=2, join=True)
        rows = dict(out)
    assert rows["DDP step (gather): parameters equal on every rank"] == S.PASS
    assert rows["S-Mem after a step (memory_sync: gather): equal on every rank"] == (S.FAIL if broken else S.PASS)


def test_the_distributed_checks_run_under_torchrun(tmp_path):
    """The torchrun launch of two gloo processes and every row it reads back (both memory_sync modes)."""
    report = S.Report()
    S.distributed(report, CPU, 2, tmp_path)
    rows = results(report)
    assert len(rows) == 6 and set(rows.values()) == {S.PASS}, report.rows


def test_recommendations_follow_the_timings():
    def row(attention, amp, step_s, label="AllSpark"):
        return {"label": label, "amp": amp, "attention": attention, "step_s": step_s, "batch_size": 2,
                "train_peak_reserved_mb": None, "train_step_allocated_mb": 100.0}

    timed = [row("exact", "none", 1.0), row("fused", "none", 2.0), row("exact", "bf16", 0.8), row("fused", "bf16", 0.5)]
    report = S.Report()
    S.recommendations(report, CPU, timed)
    checks = [r.check for r in report.rows]
    assert checks == ["AllSpark, fp32: attention: exact", "AllSpark, bf16: attention: fused", "AllSpark: amp: bf16"]
    report = S.Report()
    S.recommendations(report, CPU, [row("exact", "none", 1.0), row("exact", "bf16", 0.95)])
    assert [r.check for r in report.rows] == ["AllSpark: amp: none"]


def test_a_crashing_check_is_a_failure_that_names_it():
    report = S.Report()

    def numerics_check(report):
        raise RuntimeError("CUDA error: an illegal memory access")

    report.run("numerics", numerics_check)
    (row,) = report.failed
    assert row.check == "numerics_check crashed" and "illegal memory access" in row.figure


def test_the_command_exits_non_zero_naming_the_failed_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(S, "FAMILIES", ONE_FAMILY)
    out = tmp_path / "report.json"
    assert S.main(["--device", "cpu", "--quick", "--only", "numerics", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["failed"] == [] and report["environment"]["torch"] == torch.__version__
    assert {r["section"] for r in report["rows"]} == {"environment", "numerics", "attention"}

    monkeypatch.setattr(S, "FP32_RTOL", 0.0)  # nothing is exact: the fp32 comparisons fail
    assert S.main(["--device", "cpu", "--quick", "--only", "numerics", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED: numerics: DINOv3 + DPT, fp32 (TF32 off) vs CPU float64" in printed
    assert "DINOv3 + DPT, fp32 (TF32 off) vs CPU float64" in json.loads(out.read_text())["failed"]


def test_a_compiled_step_that_drifts_from_eager_fails(tmp_path, monkeypatch):
    """The comparison of the compiled steps (compiling itself takes minutes here: the CUDA run and the full CPU
    run exercise it): a state 1 % off the eager one is a FAIL."""
    def steps(method, family, data, device, compile_, steps=3):
        state = {"model w": torch.ones(4) * (1.01 if compile_ else 1.0)}
        return torch.ones(steps, 2), state

    monkeypatch.setattr(S, "_steps", steps)
    report = S.Report()
    S.training(report, CPU, tmp_path, quick=False, runs=[("allspark", "AllSpark / MiT")], amps=())
    (row,) = report.rows
    assert row.check.startswith("allspark, compiled steps vs eager") and row.result == S.FAIL, row


def test_a_torch_below_the_floor_fails_the_environment_check(monkeypatch):
    monkeypatch.setattr(S, "torch_older_than", lambda floor, version=None: True)
    report = S.Report()
    S.environment(report, CPU)
    rows = results(report)
    assert rows["torch >= 2.2 (training)"] == S.FAIL and rows["torch >= 2.4 (compile: true)"] == S.INFO
