"""scripts/train.sh and scripts/slurm_train.sh: arguments, default splits, overrides, and exit statuses."""
import os
import shlex
import subprocess

import pytest

from helpers import ROOT


def launch(script, *args, env=None, shell="sh"):
    return subprocess.run([shell, str(ROOT / "scripts" / script), *args], capture_output=True, text=True, cwd="/",
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("args, expected", [
    ("4 29500", "--config=configs/pascal_allspark.yaml --labeled-id-path splits/pascal/1464/labeled.txt "
                "--unlabeled-id-path splits/pascal/1464/unlabeled.txt --save-path exp/pascal/allspark/1464"),
    ("1 29510 cityscapes", "--config=configs/cityscapes_allspark.yaml --labeled-id-path splits/cityscapes/1_16/"
                           "labeled.txt --unlabeled-id-path splits/cityscapes/1_16/unlabeled.txt "
                           "--save-path exp/cityscapes/allspark/1_16"),
    ("1 29501 pascal semi 1464", "--config=configs/pascal_baseline_semi.yaml --labeled-id-path "
                                 "splits/pascal/1464/labeled.txt"),
    ("2 29501 cityscapes baseline_sup 1_8", "--config=configs/cityscapes_baseline_sup.yaml"),
    ("1 29501 coco unimatch_v2", "--config=configs/coco_unimatch_v2.yaml --labeled-id-path splits/coco/1_512/"),
    ("2 29502 toy sup", "--config=configs/toy_baseline_sup.yaml --labeled-id-path splits/toy/labeled.txt"),
    ("1 29503 pascal unimatch_v2 92 epochs=2 lr=0.01", "--port 29503 --opts epochs=2 lr=0.01"),
    ("1 29503 pascal --time-limit 71h epochs=2", "--port 29503 --time-limit 71h --opts epochs=2"),
    ("1 29503 cityscapes allspark 1_8 --config /x/release.yaml", "--config=/x/release.yaml --method allspark "),
    ("1 29503 pascal --save-path /tmp/run 'eval_scales=[1.0, 1.5]'",
     "--save-path /tmp/run --port 29503 --opts eval_scales=[1.0, 1.5]"),
])
def test_arguments_become_train_py_arguments(args, expected, tmp_path):
    if "/x/release.yaml" in args:
        (tmp_path / "release.yaml").write_text("{}")
        args = args.replace("/x/release.yaml", str(tmp_path / "release.yaml"))
        expected = expected.replace("/x/release.yaml", str(tmp_path / "release.yaml"))
    for script in ("train.sh", "slurm_train.sh"):
        out = launch(script, *shlex.split(args), "--dry-run")
        assert out.returncode == 0, out.stderr
        command = " ".join(shlex.split(out.stdout))  # the command as the shell would run it
        assert expected in command, (script, command)


def test_dry_run_and_refused_arguments_write_nothing(tmp_path):
    save = tmp_path / "run"
    assert launch("train.sh", "1", "29500", "toy", "--save-path", str(save), "--dry-run").returncode == 0
    out = launch("train.sh", "1", "29510", "cityscapes", "allspark", "1464", "--save-path", str(save))
    assert out.returncode == 2
    assert "split list not found: splits/cityscapes/1464/labeled.txt; splits of 'cityscapes': 1_16 1_2 1_30 1_4 1_8" \
        in out.stderr
    out = launch("train.sh", "1", "29510", "pascal", "foo", "--save-path", str(save))
    assert out.returncode == 2 and "no config configs/pascal_foo.yaml; methods with a config for 'pascal': allspark" \
        in out.stderr
    assert launch("train.sh", "x", "29510").returncode == 2
    assert launch("train.sh", "1").returncode == 2 and "usage: train.sh" in launch("train.sh", "1").stderr
    assert not save.exists()


@pytest.mark.parametrize("script", ["train.sh", "slurm_train.sh"])
def test_a_failed_training_fails_the_launch(tmp_path, script):
    """The training command fails (a stand-in torchrun / srun that prints its arguments and exits 2, as
    train.py does on a bad override): the launcher exits with that status, through its `| tee`, and the log
    holds what the command printed. (scripts/train.sh with the real torchrun and train.py: test_custom_dataset.)"""
    launcher = "torchrun" if script == "train.sh" else "srun"
    (tmp_path / launcher).write_text('#!/usr/bin/env bash\necho "stand-in $(basename "$0") got: $*"\n'
                                     'echo "error: epochs must be int, got two"\nexit 2\n')
    (tmp_path / launcher).chmod(0o755)
    save = tmp_path / "run"
    out = launch(script, "1", "29541", "toy", "allspark", "--save-path", str(save), "epochs=two",
                 env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert out.returncode == 2, out.stderr
    assert "train.py --config=configs/toy_allspark.yaml" in out.stdout and "--opts epochs=two" in out.stdout
    assert "training failed with exit status 2" in out.stderr
    logs = list(save.glob("*.log"))
    assert len(logs) == 1 and "epochs must be int" in logs[0].read_text()


def test_slurm_script_without_srun_fails(tmp_path):
    out = launch("slurm_train.sh", "1", "29500", "toy", "--save-path", str(tmp_path / "run"),
                 env={"PATH": "/usr/bin:/bin"}, shell="bash")
    assert out.returncode == 127 and "srun not found" in out.stderr
