"""Gather training runs into one table (and one picture): ``python -m allspark.summarize PATH... [--plot F.png]
[--csv] [--json]``.

Every folder under the PATHs that holds a ``run.json`` is a run (``train.py`` writes it, and ``metrics.jsonl``
with one line per evaluated epoch, beside the checkpoints). Runs are grouped by config and split; a group is
the seeds of one recipe (``scripts/train.sh ... --seeds 0,1,2`` writes ``<save path>/seed<k>/``). Per group the
summary lists each run (seed, status, epochs done, best mIoU and its epoch, last mIoU, the EMA teacher's where
there is one, wall time), then the mean +- standard deviation over the runs, the papers' number for that
benchmark and split where it is known (``allspark/config/paper_results.yaml``), the config keys in which the
runs differ, and the per-class IoU at each run's best epoch averaged over the runs. Markdown by default;
``--csv`` and ``--json`` print the same figures as CSV rows or one JSON document.
"""
import argparse
import csv
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..config import paper_result
from ..data import class_names
from ..engine.cluster import lock_held
from ..engine.records import RUN_FILE, read_epoch_records, read_run_record

__all__ = ["Run", "find_runs", "group_runs", "summarize", "to_markdown", "to_csv", "plot_curves", "main"]

TAGS = {"": "model", "ema": "EMA"}  # evaluated models, by the trainer's tag


class Run:
    """One run folder: its ``run.json`` and ``metrics.jsonl`` read, and what the summary says of it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.record = read_run_record(self.path) or {}
        self.epochs = read_epoch_records(self.path)
        self.config = self.record.get("config", {})
        config_path = self.record.get("config_path")
        self.config_name = Path(config_path).stem if config_path else f"{self.config.get('dataset')}_{self.config.get('method')}"
        labeled = self.record.get("labeled_id_path")
        self.split = Path(labeled).parent.name if labeled else "?"
        self.seed = self.record.get("seed")
        self.total_epochs = self.record.get("epochs", self.config.get("epochs"))
        self.done = len(self.epochs)
        if self.total_epochs is not None and self.done >= self.total_epochs:
            self.status = "done"
        else:
            self.status = "running" if lock_held(self.path) else "stopped"

    @property
    def tags(self) -> List[str]:
        return [t for t in TAGS if any(t in e.get("miou", {}) for e in self.epochs)]

    def curve(self, tag: str = "") -> List[float]:
        """The mIoU of each evaluated epoch (model, or the EMA teacher for tag 'ema')."""
        return [e["miou"][tag] for e in self.epochs if tag in e.get("miou", {})]

    def best(self, tag: str = ""):
        """(best mIoU, its epoch) or (None, None) before the first evaluation."""
        scored = [(e["miou"][tag], e["epoch"]) for e in self.epochs if tag in e.get("miou", {})]
        if not scored:
            return None, None
        top = max(score for score, _ in scored)
        return top, min(epoch for score, epoch in scored if score == top)

    def last(self, tag: str = "") -> Optional[float]:
        curve = self.curve(tag)
        return curve[-1] if curve else None

    def best_ious(self, tag: str = "") -> Optional[List[float]]:
        _, epoch = self.best(tag)
        for e in self.epochs:
            if e["epoch"] == epoch:
                return e.get("iou", {}).get(tag)
        return None

    @property
    def seconds(self) -> float:
        return sum(e.get("seconds", 0.0) for e in self.epochs)

    def losses(self) -> List[float]:
        """The mean training loss of each epoch."""
        return [e.get("train", {}).get("loss") for e in self.epochs]


def find_runs(paths: Sequence) -> List[Run]:
    """Every run folder (one holding run.json) at or under ``paths``, in path order."""
    found = set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"summarize: {path} does not exist")
        if (path / RUN_FILE).is_file():
            found.add(path.resolve())
        found.update(p.parent.resolve() for p in path.rglob(RUN_FILE))
    return [Run(p) for p in sorted(found)]


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def differing_keys(runs: Sequence[Run]) -> Dict[str, List]:
    """The config keys (dotted, e.g. model.backbone.type) whose values differ between ``runs``, with the
    process count and the lr each run used (after lr_scaling)."""
    flat = [{**_flatten(r.config), "(processes)": r.record.get("world_size"), "(lr used)": r.record.get("lr")}
            for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1}


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def group_runs(runs: Sequence[Run]) -> Dict[tuple, List[Run]]:
    """{(config name, split): runs}, in first-seen order; runs of a group in seed order."""
    groups: Dict[tuple, List[Run]] = {}
    for run in runs:
        groups.setdefault((run.config_name, run.split), []).append(run)
    return {k: sorted(v, key=lambda r: (r.seed is None, r.seed, str(r.path))) for k, v in groups.items()}


def summarize(runs: Sequence[Run]) -> List[dict]:
    """The summary of each group as plain data (what every output format prints)."""
    out = []
    for (name, split), members in group_runs(runs).items():
        first = members[0].config
        backbone = (first.get("model", {}).get("backbone") or {}).get("type")
        group = {"config": name, "split": split, "dataset": first.get("dataset"), "method": first.get("method"),
                 "backbone": backbone, "runs": [], "mean": {}, "std": {}, "differ": differing_keys(members),
                 "paper": paper_result(first.get("method"), first.get("dataset"), split, backbone)}
        tags = [t for t in TAGS if any(t in r.tags for r in members)]
        for run in members:
            row = {"path": str(run.path), "seed": run.seed, "status": run.status, "epochs_done": run.done,
                   "epochs": run.total_epochs, "seconds": round(run.seconds, 1)}
            for tag in tags:
                best, epoch = run.best(tag)
                row[f"best{_suffix(tag)}"], row[f"best_epoch{_suffix(tag)}"] = best, epoch
                row[f"last{_suffix(tag)}"] = run.last(tag)
            group["runs"].append(row)
        for tag in tags:
            for stat in ("best", "last"):
                key = f"{stat}{_suffix(tag)}"
                group["mean"][key], group["std"][key] = _mean_std([row.get(key) for row in group["runs"]])
        names = class_names({**first, "nclass": first.get("nclass", 0)}) if first else []
        per_class = [ious for ious in (run.best_ious("") for run in members) if ious]
        if per_class:
            group["per_class"] = [{"class": names[i] if i < len(names) else str(i),
                                   "mean": statistics.mean(v[i] for v in per_class),
                                   "std": statistics.stdev(v[i] for v in per_class) if len(per_class) > 1 else None}
                                  for i in range(len(per_class[0]))]
        group["tags"] = tags
        out.append(group)
    return out


def _suffix(tag):
    return f"_{tag}" if tag else ""


def _num(value, digits=2):
    return "" if value is None else f"{value:.{digits}f}"


def _pm(mean, std):
    if mean is None:
        return ""
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _hms(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def to_markdown(groups: List[dict]) -> str:
    lines = []
    for g in groups:
        ema = "ema" in g["tags"]
        lines += [f"## {g['config']} / {g['split']} ({g['dataset']}, {g['method']}, {g['backbone']})", ""]
        head = ["run", "seed", "status", "epochs", "best mIoU (epoch)", "last mIoU"]
        head += ["EMA best (epoch)", "EMA last"] if ema else []
        head += ["wall time"]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for r in g["runs"]:
            cells = [r["path"], str(r["seed"]), r["status"], f"{r['epochs_done']}/{r['epochs']}",
                     f"{_num(r.get('best'))} ({r.get('best_epoch')})" if r.get("best") is not None else "",
                     _num(r.get("last"))]
            if ema:
                cells += [f"{_num(r.get('best_ema'))} ({r.get('best_epoch_ema')})" if r.get("best_ema") is not None
                          else "", _num(r.get("last_ema"))]
            lines.append("| " + " | ".join(cells + [_hms(r["seconds"])]) + " |")
        n = len(g["runs"])
        mean = [f"mean ± std ({n} run{'s' if n > 1 else ''})", "", "", "", _pm(g["mean"].get("best"), g["std"].get("best")),
                _pm(g["mean"].get("last"), g["std"].get("last"))]
        if ema:
            mean += [_pm(g["mean"].get("best_ema"), g["std"].get("best_ema")),
                     _pm(g["mean"].get("last_ema"), g["std"].get("last_ema"))]
        lines.append("| " + " | ".join(mean + [""]) + " |")
        if g["paper"]:
            reported = f"{g['paper']['miou']:.2f}"
            on_ema = g["paper"]["score"] == "ema"
            paper = ["paper", "", "", "", "" if on_ema and ema else reported, ""]
            paper += ([reported if on_ema else "", ""] if ema else []) + [""]
            lines.append("| " + " | ".join(paper) + " |")
        lines.append("")
        if g["paper"]:
            which = "the EMA teacher's best" if g["paper"]["score"] == "ema" else "the best"
            lines += [f"Paper ({which} mIoU): {g['paper']['source']}", ""]
        if g["differ"]:
            lines += ["The runs differ in: " + "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in g["differ"].items()), ""]
        if g.get("per_class"):
            lines += ["Per-class IoU at each run's best epoch, over the runs:", "", "| class | IoU |", "| --- | --- |"]
            lines += [f"| {c['class']} | {_pm(c['mean'], c['std'])} |" for c in g["per_class"]]
            lines.append("")
    return "\n".join(lines)


def to_csv(groups: List[dict]) -> str:
    """One row per run, then a mean and a std row per group."""
    fields = ["config", "split", "row", "path", "seed", "status", "epochs_done", "epochs", "best", "best_epoch", "last",
              "best_ema", "best_epoch_ema", "last_ema", "seconds", "paper"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for g in groups:
        base = {"config": g["config"], "split": g["split"], "paper": g["paper"]["miou"] if g["paper"] else None}
        for r in g["runs"]:
            writer.writerow({**base, "row": "run", **r})
        writer.writerow({**base, "row": "mean", **g["mean"]})
        writer.writerow({**base, "row": "std", **g["std"]})
    return buf.getvalue()


def plot_curves(runs: Sequence[Run], path) -> "object":
    """mIoU per epoch of every run (one colour per config and split, one thin line per run, their mean bold)
    and the training loss per epoch, written to ``path`` (PNG); returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_miou, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((name, split), members) in enumerate(group_runs(runs).items()):
        colour = colours[i % len(colours)]
        label = f"{name} / {split}"
        curves = []
        for run in members:
            epochs = [e["epoch"] for e in run.epochs if "" in e.get("miou", {})]
            ax_miou.plot(epochs, run.curve(""), color=colour, linewidth=0.8, alpha=0.6)
            losses = run.losses()
            ax_loss.plot([e["epoch"] for e in run.epochs], losses, color=colour, linewidth=0.8, alpha=0.6,
                         label=label if run is members[0] else None)
            curves.append(run.curve(""))
        common = min(len(c) for c in curves)
        if common and len(members) > 1:
            ax_miou.plot(range(common), [statistics.mean(c[e] for c in curves) for e in range(common)], color=colour,
                         linewidth=2.5, label=f"{label} (mean of {len(members)})")
        elif common:
            ax_miou.lines[-1].set_label(label)
    ax_miou.set(xlabel="epoch", ylabel="mIoU", title="validation mIoU (thin: a run; bold: the mean)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss (epoch mean)")
    for ax in (ax_miou, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m allspark.summarize",
                                     description="One table of training runs: best / last mIoU per run, mean and "
                                                 "std over seeds, the papers' numbers, per-class IoU")
    parser.add_argument("paths", nargs="+", help="run folders, or folders to search for them (e.g. exp/pascal)")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="write the mIoU and loss curves here")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--csv", action="store_true", help="print CSV rows instead of Markdown")
    form.add_argument("--json", action="store_true", help="print one JSON document instead of Markdown")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs = find_runs(args.paths)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not runs:
        print(f"summarize: no run folder (with {RUN_FILE}) under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    groups = summarize(runs)
    if args.json:
        print(json.dumps(groups, indent=1))
    elif args.csv:
        print(to_csv(groups), end="")
    else:
        print(to_markdown(groups))
    if args.plot:
        plot_curves(runs, args.plot)
        print(f"curves: {args.plot}", file=sys.stderr)
    return 0
