"""Ray job entry point for training: same arguments as ``weldray train``.

ray job submit --working-dir . -- python jobs/train.py DATA [key=value ...]
python jobs/train.py DATA [key=value ...]                 # local Ray instance
"""

from __future__ import annotations

import typer

from weldray.training.cli import train

if __name__ == "__main__":
    typer.run(train)
