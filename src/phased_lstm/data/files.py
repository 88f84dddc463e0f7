"""Writing a file so that no reader, and no crash, ever sees it half written.

The one atomic writer of the project: the event files (:func:`.events.write_nmnist`) and the
experiments' output folders (results, reports, datasets) are written through it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text is encoded as UTF-8) to ``path`` through a temporary file in the
    same folder that replaces ``path`` in one step, with the mode of an ordinary new file.

    The folder must exist. A failure (or an interruption) removes the temporary file and leaves
    ``path`` as it was.

    Example:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> write_atomic(folder / "note.txt", "done\\n")
        >>> (folder / "note.txt").read_text()
        'done\\n'
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); give it the mode of an ordinary new file.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["write_atomic"]
