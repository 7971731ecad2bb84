"""Score a checkpoint: python eval.py --config C --checkpoint CKPT [--mode M] [--save-vis DIR]

Works on the CPU, one GPU, or under torchrun (each process scores its share of the val list)."""
import argparse

from allspark.engine.entry import run_main
from allspark.config import EVAL_MODES
from allspark.engine.score import main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a segmentation checkpoint on a config's val list")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="this project's or the release's checkpoint")
    parser.add_argument("--mode", choices=EVAL_MODES, default=None, help="overrides the config's eval_mode")
    parser.add_argument("--ema", action="store_true", help="score the checkpoint's EMA teacher (model_ema: UniMatch V2, or teacher: ema)")
    parser.add_argument("--save-vis", default=None, help="write image | ground truth | prediction PNGs here")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, read as YAML and checked like the file: --opts lr=0.01 epochs=2 "
                             "criterion.kwargs.min_kept=50000")
    parser.add_argument("--port", type=int, default=None, help="rendezvous port under SLURM")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cli(argv=None):
    """eval.py with ``argv`` (default: the command line's): (mIoU, per-class IoU), or its error as one line and
    exit status 2."""
    return run_main(main, parse_args(argv))


if __name__ == "__main__":
    cli()
