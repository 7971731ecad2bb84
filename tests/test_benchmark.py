"""A smoke test of the benchmark tool (timings are reported, never asserted)."""
import json

import pytest

from allspark.tools.benchmark import main

from helpers import ROOT


@pytest.mark.parametrize("config, crop, extra, header", [
    ("toy_allspark", 65, ["--memory", "on"], "batch 1 + 1 memory on attention fused amp none"),
    ("toy_allspark", 65, ["--attention", "fused", "--activation-checkpointing"],
     "batch 1 + 1 memory on attention fused amp none checkpointed"),
    ("toy_baseline_sup", 65, [], "batch 1 amp none"),
    ("toy_unimatch_v2", 70, [], "batch 1 + 1 amp none"),  # EMA pass, two forwards, AdamW, EMA update
    ("toy_unimatch_v2_dinov3", 64, [], "batch 1 + 1 amp none"),
])
def test_benchmark_writes_its_report(tmp_path, config, crop, extra, header, capsys):
    out = tmp_path / "bench.json"
    assert main(["--config", str(ROOT / "configs" / f"{config}.yaml"), "--steps", "2", "--warmup", "0",
                 "--crop", str(crop), "--batch-size", "1", "--device", "cpu", "--out", str(out), *extra]) == 0
    res = json.loads(out.read_text())
    assert res["crop"] == crop and res["batch_size"] == 1 and res["device"] == "cpu"
    assert len(res["train_step"]["steps_s"]) == 2 and res["train_step"]["median_s"] > 0
    assert res["eval_forward"]["images_per_s"] > 0 and res["train_peak_memory_mb"] > 0
    assert res["train_step_allocated_mb"] > 0, "the step's own allocations, from the profiler's memory timeline"
    printed = capsys.readouterr().out
    assert "train step : median" in printed and header in printed
    if config == "toy_baseline_sup":
        assert res["train_step_host_syncs"] == 0, "the trainer's step reads nothing back (the loop reads its values)"
