"""Values the whole project agrees on, in one place."""
__all__ = ["IGNORE_INDEX", "EVAL_MODES", "AMP_MODES", "LR_SCALINGS", "REDUCE_ZERO_LABEL"]

IGNORE_INDEX = 255  # the ignore label inside the project: masks, losses and metrics
EVAL_MODES = ("original", "center_crop", "sliding_window", "multiscale")  # how evaluation and predict.py infer
AMP_MODES = ("none", "bf16", "fp16")  # the training step's autocast: none (fp32, the releases), bf16, fp16
# how the learning rates follow the run's total batch: none (the config's lr, the releases), linear (x total / reference)
LR_SCALINGS = ("none", "linear")
# Datasets whose masks are read with reduce-zero-label (mmsegmentation's convention): 0 ("other") becomes
# ignore and class k is k - 1. ADE20K's official annotations hold 0 = other and 1..150.
REDUCE_ZERO_LABEL = ("ade20k",)
