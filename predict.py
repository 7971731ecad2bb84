"""Predict with a checkpoint, no ground truth needed:
python predict.py --config C --checkpoint CKPT --input DIR|LIST.txt|IMAGE... --output OUT [--mode M] [--overlay] [--logits]

Writes OUT/<name>.png (palette PNGs of class indices), with --overlay OUT/overlay/<name>.jpg and with
--logits OUT/logits/<name>.npy. CPU, one GPU, or torchrun (each process predicts its share)."""
import argparse

from allspark.engine.entry import run_main
from allspark.config import EVAL_MODES
from allspark.engine.predict import main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Segment images with a trained checkpoint")
    parser.add_argument("--config", required=True, help="the config the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="this project's or the release's checkpoint")
    parser.add_argument("--input", required=True, nargs="+",
                        help="folders (scanned recursively), split lists (.txt) or image files")
    parser.add_argument("--output", required=True, help="folder for the predictions")
    parser.add_argument("--root", default=None, help="root of the paths in a .txt list (default: the config's data_root)")
    parser.add_argument("--mode", choices=EVAL_MODES, default=None,
                        help="inference mode (default: the config's eval_mode; multiscale uses eval_scales / eval_flip)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per forward (default 1: AllSpark's eval-mode attention spans the batch, so "
                             "a batch's images influence each other's predictions; only equal sizes are batched)")
    parser.add_argument("--overlay", action="store_true", help="also write the prediction over the image (JPEG)")
    parser.add_argument("--logits", action="store_true", help="also write the raw scores (K, H, W) as .npy")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA teacher (model_ema: UniMatch V2, or teacher: ema)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, as train.py's")
    parser.add_argument("--port", type=int, default=None, help="rendezvous port under SLURM")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cli(argv=None):
    """predict.py with ``argv`` (default: the command line's): the number of predictions written, or its error as
    one line and exit status 2."""
    return run_main(main, parse_args(argv))


if __name__ == "__main__":
    cli()
