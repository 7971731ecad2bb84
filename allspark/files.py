"""Writing files whole: every file the project writes goes to a temporary file in the same folder, gets
the permissions the user's umask gives new files, and is renamed into place; a failure removes the
temporary file, leaves the previous file as it was and raises :class:`WriteError` naming the file."""
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WriteError", "atomic_path", "current_umask"]


class WriteError(OSError):
    """A file could not be written (full disk, permissions, ...); the message names it and the reason."""


def current_umask():
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc, folder):
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = f"{os.strerror(exc.errno)} (errno {exc.errno})"
    else:  # torch.save reports a short write as RuntimeError ("unexpected pos ...")
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        free = shutil.disk_usage(folder).free
        reason += f"; {free / 2**20:.1f} MiB free on the disk of {folder}"
    except OSError:
        pass
    return reason


@contextmanager
def atomic_path(path, kind="file"):
    """Yield a temporary path beside ``path``; when the block ends without error, give it the umask's
    permissions (0666 & ~umask, as open() would) and rename it to ``path``. Any error removes it and
    raises WriteError (KeyboardInterrupt and other BaseExceptions are re-raised as they are)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise WriteError(f"cannot write {kind} {path}: {_reason(exc, path.parent)}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        previous = "the previous one is left as it was" if path.exists() else "nothing was written"
        raise WriteError(f"cannot write {kind} {path}: {_reason(exc, path.parent)}; {previous}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
