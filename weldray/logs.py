"""What a person sees on the console, and where the rest goes.

A normal run prints weldray's own lines on stderr: a header and a summary per stage, progress bars, warnings.
Ray's own logs (Ray Data's execution plans, the output of workers and actors, warnings from Ray's internals)
stay in the Ray session's log folder, named once when Ray starts. ``--verbose`` / ``-v`` or
``WELDRAY_LOG_LEVEL=DEBUG`` shows all of it: debug lines, worker output forwarded by Ray, Ray Data's plans.
"""

from __future__ import annotations

import logging
import os

LEVEL_ENV = "WELDRAY_LOG_LEVEL"
#: Libraries whose INFO lines describe their own internals (ONNX graph rewriting, constant folding): shown
#: only when verbose.
CHATTY = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export")


def verbose() -> bool:
    """True under ``--verbose`` or ``WELDRAY_LOG_LEVEL=DEBUG``."""
    return os.environ.get(LEVEL_ENV, "INFO").upper() == "DEBUG"


def setup(verbose_flag: bool = False) -> None:
    """Console logging for a weldray command (rich, on stderr), at ``WELDRAY_LOG_LEVEL`` (INFO by default)."""
    from rich.console import Console
    from rich.logging import RichHandler

    if verbose_flag:
        os.environ[LEVEL_ENV] = "DEBUG"  # inherited by the processes Ray starts, and read by init_ray
    level = os.environ.get(LEVEL_ENV, "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"{LEVEL_ENV}={level!r}: use DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)],
    )
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose() else logging.WARNING)


def quiet_ray_data() -> None:
    """Ray Data's INFO lines (execution plans, "execution finished") go to its log file, not the console;
    its warnings still show. weldray draws its own progress bars, so Ray's note that its bars are off is
    dropped. Nothing changes when verbose."""
    if verbose():
        return
    import ray.data  # noqa: F401  (configures the "ray.data" logger on import)
    from ray.util import log_once

    log_once("ray_data_progress_manager_disabled")  # that note is logged once per process: spend the once here
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":  # Ray Data's default config: a console and a session-file handler
            handler.setLevel(logging.WARNING)
