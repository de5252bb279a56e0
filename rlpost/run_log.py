"""Where a run's logs go. The console keeps the progress bars, one line per step and real problems; library warnings
(every process's, each once per place it is raised) and informational logs go to files in the run directory."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

WARNINGS = "warnings.log"
LOG = "rlpost.log"


def _file_handler(path: Path, fmt: str) -> logging.FileHandler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(fmt))
    return handler


def warnings_to_file(run_dir: str | Path, who: str) -> None:
    """This process's Python warnings go to <run_dir>/warnings.log, tagged with `who`, not to stderr (from where
    Ray prints a worker's on the driver's console, between the progress bars)."""
    logger = logging.getLogger("py.warnings")
    logger.handlers = [_file_handler(Path(run_dir) / WARNINGS, f"%(asctime)s {who}: %(message)s")]
    logger.propagate = False
    warnings.simplefilter("default")  # once per place it is raised, whatever a library set
    logging.captureWarnings(True)


class _AboveTheBars(logging.Handler):
    """Console lines written through tqdm, so they land above the progress bars instead of inside them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record))


def driver_logging(run_dir: str | Path) -> None:
    """The `rlpost train` process: INFO and up, rlpost's and Ray's, to <run_dir>/rlpost.log; rlpost's warnings and
    errors also to the console (above the bars), Ray's errors only; Python warnings to warnings.log."""
    import ray  # noqa: F401 - configures the "ray" logger, which is adjusted here

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    log_file = _file_handler(Path(run_dir) / LOG, fmt)
    root = logging.getLogger()
    console = _AboveTheBars(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers = [log_file, console]
    root.setLevel(logging.INFO)
    ray_logger = logging.getLogger("ray")
    for handler in ray_logger.handlers:
        handler.setLevel(logging.ERROR)
    ray_logger.addHandler(_file_handler(Path(run_dir) / LOG, fmt))  # its own: ray.init restyles the ray logger's
    warnings_to_file(run_dir, "driver")
