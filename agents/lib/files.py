"""One way to replace a file that a repository, a package or a user controls the folder of."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes | str, *, mode: int | None = None,
                 mark: str = "") -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8).

    The temporary file is ``.<name>.<mark><random>.tmp`` in the same folder, created by
    ``mkstemp`` (``O_EXCL``: a file or symbolic link planted beside the target is never written
    through), and the rename replaces a symbolic link at ``path`` itself instead of following
    it. ``mode``: the new file's permissions; by default those of the file it replaces (0o644
    for a new one).
    """
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{mark}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
