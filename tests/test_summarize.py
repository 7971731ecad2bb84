"""From runs to results: the trainer's run records, the summary of toy runs (two configs x two seeds) against
their metrics files, the plot, a run still going, the papers' numbers, --seeds in the launch scripts and the
lr scaled with the total batch."""
import json
import statistics
import subprocess

import pytest
import torch

from allspark.config import ConfigError, paper_result, paper_results
from allspark.engine.cluster import RunLock
from allspark.engine.records import read_epoch_records, read_run_record
from allspark.engine.trainer import Trainer
from allspark.tools import summarize as S

from helpers import ROOT, call, clean_env, free_port, make_toy, training_config, write_config

EPOCHS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """exp/<config>/seed<k>: two configs (lr 0.005 and 0.01) x seeds 0 and 1, three epochs each, in-process."""
    root = tmp_path_factory.mktemp("summarize")
    data = make_toy(root / "toy", num_train=8, num_labeled=4, num_val=2)
    exp = root / "exp"
    for name, lr in (("tiny_a", 0.005), ("tiny_b", 0.01)):
        config = write_config(root / f"{name}.yaml", data, epochs=EPOCHS, lr=lr)
        for seed in (0, 1):
            out = call("train", ["--config", config, "--labeled-id-path", data.labeled, "--unlabeled-id-path",
                                 data.unlabeled, "--save-path", exp / name / f"seed{seed}", "--seed", seed])
            assert out.status == 0, out.log[-2000:]
    return exp


def test_the_trainer_records_the_run_and_every_epoch(runs):
    record = read_run_record(runs / "tiny_a" / "seed1")
    assert record["seed"] == 1 and record["world_size"] == 1 and record["epochs"] == EPOCHS
    assert record["config"]["lr"] == 0.005 == record["lr"] and record["config_path"].endswith("tiny_a.yaml")
    epochs = read_epoch_records(runs / "tiny_a" / "seed1")
    assert [e["epoch"] for e in epochs] == list(range(EPOCHS))
    ckpt = torch.load(runs / "tiny_a" / "seed1" / "latest.pth", weights_only=False)
    assert max(e["miou"][""] for e in epochs) == pytest.approx(ckpt["previous_best"])
    assert len(epochs[-1]["iou"][""]) == 5 and epochs[-1]["train"]["loss"] > 0 and epochs[-1]["seconds"] > 0


def test_the_summary_gives_each_run_and_the_mean_and_std_over_seeds(runs):
    groups = S.summarize(S.find_runs([runs]))
    assert [(g["config"], len(g["runs"])) for g in groups] == [("tiny_a", 2), ("tiny_b", 2)]
    for g in groups:
        curves = [[e["miou"][""] for e in read_epoch_records(r["path"])] for r in g["runs"]]
        bests, lasts = [max(c) for c in curves], [c[-1] for c in curves]
        assert [r["best"] for r in g["runs"]] == bests and [r["last"] for r in g["runs"]] == lasts
        assert [r["best_epoch"] for r in g["runs"]] == [c.index(max(c)) for c in curves]
        assert g["mean"]["best"] == pytest.approx(statistics.mean(bests))
        assert g["std"]["best"] == pytest.approx(statistics.stdev(bests))
        assert g["mean"]["last"] == pytest.approx(statistics.mean(lasts))
        assert all(r["status"] == "done" and r["epochs_done"] == EPOCHS for r in g["runs"])
        assert g["differ"] == {} and len(g["per_class"]) == 5
    table = S.to_markdown(groups)
    assert "| mean ± std (2 runs) |" in table and f"{groups[0]['mean']['best']:.2f} ± {groups[0]['std']['best']:.2f}" in table
    rows = S.to_csv(groups).splitlines()
    assert rows[0].startswith("config,split,row") and len(rows) == 1 + 2 * (2 + 2)


def test_runs_that_differ_in_a_key_are_named_and_a_run_still_going_is_marked(runs, tmp_path):
    mixed = tmp_path / "mixed"
    for name in ("tiny_a", "tiny_b"):
        (mixed / name).mkdir(parents=True)
        for f in ("run.json", "metrics.jsonl"):
            (mixed / name / f).write_bytes((runs / name / "seed0" / f).read_bytes())
    for name in ("tiny_a", "tiny_b"):  # one group: the same config name
        record = json.loads((mixed / name / "run.json").read_text())
        record["config_path"] = "configs/tiny.yaml"
        (mixed / name / "run.json").write_text(json.dumps(record))
    lines = (mixed / "tiny_b" / "metrics.jsonl").read_text().splitlines()
    (mixed / "tiny_b" / "metrics.jsonl").write_text(lines[0] + "\n")  # one epoch of three
    lock = RunLock(mixed / "tiny_b").acquire()  # as a live run holds it
    try:
        (group,) = S.summarize(S.find_runs([mixed]))
    finally:
        lock.release()
    assert [r["status"] for r in group["runs"]] == ["done", "running"]
    assert group["differ"]["lr"] == [0.005, 0.01] and group["differ"]["(lr used)"] == [0.005, 0.01]
    (group,) = S.summarize(S.find_runs([mixed]))
    assert group["runs"][1]["status"] == "stopped"


def test_the_plot_has_one_line_per_run_and_a_bold_mean_per_config(runs, tmp_path):
    fig = S.plot_curves(S.find_runs([runs]), tmp_path / "curves.png")
    miou_axis, loss_axis = fig.axes
    assert len(miou_axis.lines) == 4 + 2 and len(loss_axis.lines) == 4
    assert sorted(line.get_linewidth() for line in miou_axis.lines)[-2:] == [2.5, 2.5]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_prints_markdown_csv_json_and_writes_the_plot(runs, tmp_path, capsys):
    out = subprocess.run(["python", "-m", "allspark.summarize", str(runs), "--plot", str(tmp_path / "c.png")], cwd=ROOT,
                         env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "## tiny_a / " in out.stdout and (tmp_path / "c.png").is_file()
    assert S.main([str(runs), "--json"]) == 0
    assert [g["config"] for g in json.loads(capsys.readouterr().out)] == ["tiny_a", "tiny_b"]
    assert S.main([str(runs), "--csv"]) == 0
    assert capsys.readouterr().out.startswith("config,split,row,path")
    assert S.main([str(tmp_path)]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_the_papers_numbers_come_from_one_file():
    entries = paper_results()
    for e in entries:
        assert {"method", "dataset", "encoder", "source", "results"} <= set(e), e
        for split, miou in e["results"].items():
            assert (ROOT / "splits" / e["dataset"] / str(split)).is_dir(), (e["dataset"], split)
            assert 0 < miou < 100
            assert paper_result(e["method"], e["dataset"], split, e["encoder"])["miou"] == miou
    assert paper_result("allspark", "toy", "toy", "mit") is None


# ---- the total batch and the lr ------------------------------------------------------------------------

def lrs(caplog, **changes):
    """(the optimizer's lrs, the batch line logged) of a trainer built from the tiny config with ``changes``."""
    cfg = training_config(**changes)
    with caplog.at_level("INFO", logger="allspark"):
        trainer = Trainer(cfg, loaders={"l": [None], "u": [None], "val": []})
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("batch:"))
    return [g["lr"] for g in trainer.optimizer.param_groups], line


def test_linear_lr_scaling_halves_the_lrs_at_half_the_reference_batch(caplog):
    (backbone, head), line = lrs(caplog, lr=0.004, batch_size=2, reference_batch=4, lr_scaling="linear")
    assert (backbone, head) == (pytest.approx(0.002), pytest.approx(0.02))
    assert "batch: 2 labeled + 2 unlabeled (2 per process x 1); the recipe's: 4 (0.5x); lr 0.002 (x 2/4" in line


def test_without_scaling_the_lrs_are_the_configs(caplog):
    (backbone, head), line = lrs(caplog, lr=0.004, batch_size=2, reference_batch=4)
    assert (backbone, head) == (pytest.approx(0.004), pytest.approx(0.04))
    assert "lr 0.004, head lr 0.04; lr_scaling: linear would scale the lrs with the batch" in line


def test_linear_scaling_needs_the_reference_batch():
    with pytest.raises(ConfigError, match="lr_scaling: linear needs reference_batch"):
        training_config(lr_scaling="linear")


def test_every_shipped_release_config_names_its_reference_batch():
    from allspark.config import load_training_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("toy"):
            continue
        cfg = load_training_config(path)
        assert cfg["reference_batch"] is not None and cfg["reference_batch"] % cfg["batch_size"] == 0, path.name
        assert cfg["lr_scaling"] == "none", path.name


# ---- --seeds in the launch scripts ---------------------------------------------------------------------

def test_seeds_make_one_folder_per_seed_and_a_rerun_resumes_the_stopped_one(tmp_path):
    """Two seeds of one epoch each, the second stopped (a time limit) and the command run again: seed 0 is
    done and passed at once, seed 1 resumes from its checkpoint."""
    data = make_toy(tmp_path / "toy", num_train=8, num_labeled=4, num_val=1)
    config = write_config(tmp_path / "c.yaml", data, epochs=1)
    split = tmp_path / "split"
    split.mkdir()
    for name in ("labeled", "unlabeled"):
        (split / f"{name}.txt").write_text((tmp_path / "toy" / f"{name}.txt").read_text())
    save = tmp_path / "exp"
    command = ["bash", "scripts/train.sh", "1", str(free_port()), "mine", "allspark", str(split), "--config", str(config),
               "--save-path", str(save), "--seeds", "0,1"]
    out = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert sorted(p.name for p in save.iterdir()) == ["seed0", "seed1"]
    assert [read_run_record(save / f"seed{k}")["seed"] for k in (0, 1)] == [0, 1]
    (save / "seed1" / "metrics.jsonl").unlink()
    ckpt = torch.load(save / "seed1" / "latest.pth", weights_only=False)
    ckpt["epoch"] = -1  # as if stopped before its only epoch ended
    torch.save(ckpt, save / "seed1" / "latest.pth")
    before = (save / "seed0" / "metrics.jsonl").read_text()
    out = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (save / "seed0" / "metrics.jsonl").read_text() == before  # done: nothing trained again
    assert [e["epoch"] for e in read_epoch_records(save / "seed1")] == [0]
    assert "resumed from" in out.stdout
