"""Settings read from the environment."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that points to the folder of real slides and labelled
#: nuclei sets used by tests and benchmarks.
DATA_DIR_ENV = "HISTO_GEDL_DATA"

_PACKAGE_ROOT = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_ROOT.parent


def shared_data_dir() -> Path:
    """Return the folder of shared real data (``$HISTO_GEDL_DATA`` or ``../shared/data``).

    The default is relative to the repository root, not to the working
    directory, so tests find it from any folder.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return (_REPO_ROOT.parent / "shared" / "data").resolve()


def bundled_data_dir() -> Path:
    """Return the repository's ``data/`` folder (sample slide, shipped models)."""
    return _REPO_ROOT / "data"
