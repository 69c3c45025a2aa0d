"""Atomic file replacement: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the folder of ``path`` and rename it to ``path`` on success.

    The temporary file keeps the suffix of ``path`` (some writers choose the
    format by suffix) and starts with a dot so that it looks unfinished. If the
    body raises, the temporary file is removed and ``path`` is left as it was.
    """
    final = Path(path)
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=f".partial{''.join(final.suffixes)}", dir=final.parent
    )
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        yield temporary
        # mkstemp creates the file readable by its owner only; give the result
        # the permissions an ordinary new file gets under the current umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
