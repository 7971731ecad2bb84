"""What the entry points (train.py, eval.py, predict.py) share: the errors that end a run with a message."""
import logging
import sys

from ..compat import TorchVersionError, check_torch_version
from ..config import ConfigError
from ..data import DataError
from ..files import WriteError
from ..models import WeightsError

__all__ = ["USER_ERRORS", "run_main"]

# Errors of the user's input or surroundings (config, data, weights, a file that cannot be written, a torch
# too old): logged as one line, exit status 2, no traceback.
USER_ERRORS = (ConfigError, DataError, WeightsError, WriteError, TorchVersionError)


def run_main(main, args, also=()):
    """``main(args)`` on a torch from the floor on; a user error (or one of ``also``) is logged as
    ``error: ...`` and exits with status 2."""
    try:
        check_torch_version()
        return main(args)
    except (*USER_ERRORS, *also) as exc:
        logging.getLogger("allspark").error(f"error: {exc}")
        sys.exit(2)
