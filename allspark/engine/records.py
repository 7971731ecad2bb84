"""What a run leaves for the tools that gather runs (``python -m allspark.summarize``), beside its checkpoints:
``run.json`` (the config and how the run was started) and ``metrics.jsonl`` (one line per evaluated epoch).
Both are written whole (a temporary file, then a rename) by rank 0."""
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..files import atomic_path

__all__ = ["RUN_FILE", "METRICS_FILE", "write_run_record", "append_epoch_record", "read_run_record",
           "read_epoch_records"]

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, "record") as tmp:
        Path(tmp).write_text(text)


def write_run_record(save_path, config: dict, config_path: Optional[str], labeled_list: Optional[str],
                     unlabeled_list: Optional[str], seed: int, world_size: int, lr: float) -> None:
    """``run.json``: the checked config, its file, the split lists, the seed, the process count, the lr used
    (after ``lr_scaling``) and when the run (or its last resumption) started."""
    record = {"config_path": config_path, "labeled_id_path": labeled_list, "unlabeled_id_path": unlabeled_list,
              "seed": seed, "world_size": world_size, "lr": lr, "epochs": config["epochs"],
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": config}
    _write_text(Path(save_path) / RUN_FILE, json.dumps(record, indent=1, default=str) + "\n")


def append_epoch_record(save_path, record: dict) -> None:
    """Add one epoch's line to ``metrics.jsonl`` (a resumed run that evaluates an epoch again replaces its line)."""
    lines = [r for r in read_epoch_records(save_path) if r.get("epoch") != record["epoch"]] + [record]
    _write_text(Path(save_path) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in lines))


def read_run_record(save_path) -> Optional[dict]:
    """``run.json`` of a run folder, or None where there is none."""
    path = Path(save_path) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_epoch_records(save_path) -> List[Dict]:
    """The lines of ``metrics.jsonl``, in epoch order (empty where there is none)."""
    path = Path(save_path) / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["epoch"])
