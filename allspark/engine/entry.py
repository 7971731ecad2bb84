"""What the entry points (train.py, eval.py, predict.py) share: the errors that end a run with a message."""
import logging
import sys

from ..compat import TorchVersionError, check_torch_version
from ..config import ConfigError
from ..data import DataError
from ..files import WriteError
from ..models import WeightsError

__all__ = ["USER_ERRORS", "EXIT_USER_ERROR", "EXIT_INTERRUPTED", "run_main", "error_message"]

# Errors of the user's input or surroundings (config, data, weights, a file that cannot be written, a torch
# too old): logged as one line, exit status 2, no traceback.
USER_ERRORS = (ConfigError, DataError, WeightsError, WriteError, TorchVersionError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program ended by Ctrl-C


def error_message(exc):
    """``exc``'s message. An error raised in a DataLoader worker reaches the main process as the same type
    with the worker's whole traceback as its message ("Caught DataError in DataLoader worker process 0.
    Original Traceback ... allspark.data.lists.DataError: <message>"): its original message is what follows
    the last ``<module>.<class>: `` of that text."""
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        at = text.rfind(marker)
        if at >= 0:
            worker = text.split("\n", 1)[0].removeprefix(f"Caught {type(exc).__name__} ").rstrip(".")
            return f"{text[at + len(marker):].strip()} ({worker})"
    return text


def run_main(main, args, also=()):
    """``main(args)`` on a torch from the floor on. A user error (or one of ``also``) is logged as
    ``error: ...`` and exits with status 2; Ctrl-C (KeyboardInterrupt) exits with status 130. ``main``
    stops its own loader workers and process group on the way out, so every path ends the process."""
    log = logging.getLogger("allspark")
    try:
        check_torch_version()
        return main(args)
    except (*USER_ERRORS, *also) as exc:
        log.error(f"error: {error_message(exc)}")
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C, SIGINT)")
        sys.exit(EXIT_INTERRUPTED)
