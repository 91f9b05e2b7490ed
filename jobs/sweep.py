"""Ray job entry point for hyperparameter sweeps: same arguments as ``weldray sweep``.

ray job submit --working-dir . -- python jobs/sweep.py SPACE [DATA] [key=value ...]
python jobs/sweep.py SPACE [DATA] [key=value ...]         # local Ray instance
"""

from __future__ import annotations

import typer

from weldray.sweep.cli import sweep

if __name__ == "__main__":
    typer.run(sweep)
