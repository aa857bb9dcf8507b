"""Writing output files so that a failure never leaves a half-written one.

>>> import pathlib, tempfile
>>> out = pathlib.Path(tempfile.mkdtemp()) / "model.py"
>>> write_atomic(out, "x = 1\\n") == out, out.read_text()
(True, 'x = 1\\n')
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cnndsl.errors import CnnDslError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before slow work) when ``path`` cannot be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise CnnDslError(f"cannot write {path}: it is a directory", None, "give a file name")
    if not path.absolute().parent.is_dir():
        raise CnnDslError(f"cannot write {path}: no folder {path.absolute().parent}", None)
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then move it into place.

    An existing ``path`` is replaced only by a complete file, and keeps its permissions; a new one gets
    the permissions ``open(path, "w")`` would give. OS errors become :class:`CnnDslError`.
    """
    path = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cnndsl-", suffix=".tmp", dir=path.absolute().parent)
    except OSError as e:
        raise CnnDslError(f"cannot write {path}: {e.strerror}", None) from None
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes) else
                                                                        {"encoding": "utf-8"})) as f:
            f.write(data)
        os.chmod(tmp, _new_file_mode(path))  # mkstemp's file is private (0600)
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise CnnDslError(f"cannot write {path}: {e.strerror}", None) from None
        raise
    return path


def _new_file_mode(path: Path) -> int:
    """The permissions ``open(path, "w")`` would give: the existing file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
