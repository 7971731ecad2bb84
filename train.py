"""Train AllSpark, UniMatch V2 or a baseline: python train.py --config C --labeled-id-path L --unlabeled-id-path U --save-path S

One process, torchrun (scripts/train.sh) or srun (scripts/slurm_train.sh); see docs/training.md."""
import argparse

from allspark.engine.entry import run_main
from allspark.engine.trainer import main
from allspark.methods import METHODS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Semi-supervised semantic segmentation: AllSpark, UniMatch V2 and baselines")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/pascal_allspark.yaml")
    parser.add_argument("--labeled-id-path", required=True, help="labeled split list")
    parser.add_argument("--unlabeled-id-path", default=None, help="unlabeled split list (not for method sup)")
    parser.add_argument("--save-path", required=True, help="folder for checkpoints and TensorBoard logs")
    parser.add_argument("--method", default=None, choices=list(METHODS),
                        help="overrides the config's method")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, read as YAML and checked like the file: --opts lr=0.01 epochs=2 "
                             "criterion.kwargs.min_kept=50000")
    parser.add_argument("--time-limit", default=None, metavar="DURATION",
                        help="wall-time budget (3600, 90m, 12h, 1-12:00:00): stop with a checkpoint (exit status 3) "
                             "before it runs out, keeping a margin of twice the longest step or evaluation (>= 60 s)")
    parser.add_argument("--port", type=int, default=None, help="rendezvous port under SLURM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cli(argv=None):
    """train.py with ``argv`` (default: the command line's): the run, or its error as one line and exit status 2."""
    return run_main(main, parse_args(argv), also=(FloatingPointError,))


if __name__ == "__main__":
    cli()
