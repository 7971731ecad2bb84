"""The mIoU the papers' releases report, per method, benchmark, encoder and split
(``paper_results.yaml`` beside this file: the one place the summary and the docs take them from)."""
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

from .loading import load_yaml

__all__ = ["PAPER_RESULTS_FILE", "paper_results", "paper_result", "results_table"]

PAPER_RESULTS_FILE = Path(__file__).with_name("paper_results.yaml")


@lru_cache(maxsize=None)
def _entries(path: str) -> tuple:
    data = load_yaml(path)
    return tuple(data["results"])


def paper_results(path=PAPER_RESULTS_FILE) -> List[dict]:
    """Every entry: {method, dataset, protocol, encoder, crop, score, source, results: {split: mIoU}}."""
    return [dict(e) for e in _entries(str(path))]


def paper_result(method: Optional[str], dataset: Optional[str], split: str, encoder: Optional[str],
                 path=PAPER_RESULTS_FILE) -> Optional[dict]:
    """{miou, score, source} of the release that reports ``method`` on ``dataset`` / ``split`` with ``encoder``
    (``score``: 'model', or 'ema' where the release reports its EMA teacher), or None."""
    for entry in _entries(str(path)):
        if (entry["method"], entry["dataset"], entry["encoder"]) == (method, dataset, encoder):
            value = entry["results"].get(str(split))
            if value is not None:
                return {"miou": float(value), "score": entry.get("score", "model"), "source": entry["source"]}
    return None


_BENCHMARKS = {"pascal": "Pascal VOC", "cityscapes": "Cityscapes", "coco": "COCO", "ade20k": "ADE20K"}
_PROTOCOLS = {"augmented": " (10,582, blender)", "u2pl": " (10,582, U2PL)"}
_ENCODERS = {"mit_b5": "MiT-B5", "dinov2_small": "DINOv2-S", "dinov2_base": "DINOv2-B", "dinov2_large": "DINOv2-L"}
_DEFAULT_ENCODER = {"allspark": "mit_b5", "unimatch_v2": "dinov2_small"}  # the shipped configs' encoders


def results_table(path=PAPER_RESULTS_FILE) -> str:
    """The README's results table (Markdown): per release, benchmark and encoder, the config that targets it and
    the reported mIoU of each split; ¹ marks figures from the release's training logs, ² from the paper only, ³ the
    release's own ADE20K lists (not this repository's)."""
    lines = ["| method | benchmark | encoder | config | reported mIoU by split |", "| --- | --- | --- | --- | --- |"]
    for e in paper_results(path):
        method = "AllSpark" if e["method"] == "allspark" else "UniMatch V2 (EMA)"
        config = f"`configs/{e['dataset']}_{e['method']}.yaml`"
        if e["encoder"] != _DEFAULT_ENCODER.get(e["method"]):
            config += f" with `{e['encoder']}` and its head widths (the config's comments)"
        digits = 2 if e["method"] == "allspark" else 1
        splits = " · ".join(f"{split}: {miou:.{digits}f}" for split, miou in e["results"].items())
        mark = " ¹" if "DERIVED FROM LOGS" in e["source"] else " ²" if "PAPER ONLY" in e["source"] else ""
        if e["dataset"] == "ade20k":
            mark += " ³"
        benchmark = _BENCHMARKS[e["dataset"]] + _PROTOCOLS.get(e.get("protocol"), "")
        lines.append(f"| {method} | {benchmark} | {_ENCODERS.get(e['encoder'], e['encoder'])} | {config} | {splits}{mark} |")
    return "\n".join(lines)
