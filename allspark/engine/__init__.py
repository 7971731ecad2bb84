"""Engine: distributed set-up, training loop, evaluation, losses, metrics, checkpoints, logging.

Importing it imports ``allspark.methods``, which registers every method's config keys with the config
layer, so that whatever runs through the engine (train.py, eval.py, predict.py, the tools) loads any
method's config."""
from .. import methods  # noqa: F401
