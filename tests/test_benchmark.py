"""A smoke test of the benchmark tool (timings are reported, never asserted)."""
import json

import pytest

from allspark.benchmark import main

from conftest import ROOT


@pytest.mark.parametrize("config, extra", [("toy_allspark", ["--memory", "on"]), ("toy_baseline_sup", [])])
def test_benchmark_writes_its_report(tmp_path, config, extra, capsys):
    out = tmp_path / "bench.json"
    assert main(["--config", str(ROOT / "configs" / f"{config}.yaml"), "--steps", "2", "--warmup", "0",
                 "--crop", "65", "--batch-size", "1", "--device", "cpu", "--out", str(out), *extra]) == 0
    res = json.loads(out.read_text())
    assert res["crop"] == 65 and res["batch_size"] == 1 and res["device"] == "cpu"
    assert len(res["train_step"]["steps_s"]) == 2 and res["train_step"]["median_s"] > 0
    assert res["eval_forward"]["images_per_s"] > 0 and res["train_peak_memory_mb"] > 0
    assert "train step : median" in capsys.readouterr().out
