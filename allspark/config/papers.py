"""The mIoU the papers' releases report, per method, benchmark, encoder and split
(``paper_results.yaml`` beside this file: the one place the summary and the docs take them from)."""
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

from .loading import load_yaml

__all__ = ["PAPER_RESULTS_FILE", "paper_results", "paper_result"]

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
