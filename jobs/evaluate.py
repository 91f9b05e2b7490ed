"""Ray job entry point for evaluation: same arguments as ``weldray evaluate``.

ray job submit --working-dir . -- python jobs/evaluate.py RUN_DIR DATA [key=value ...]
"""

from __future__ import annotations

import typer

from weldray.training.cli import evaluate

if __name__ == "__main__":
    typer.run(evaluate)
