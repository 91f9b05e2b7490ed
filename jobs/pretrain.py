"""Ray job entry point for the DINO warm-up: same arguments as ``weldray pretrain``.

ray job submit --working-dir . -- python jobs/pretrain.py DATA [key=value ...]
python jobs/pretrain.py DATA [key=value ...]              # local Ray instance
"""

from __future__ import annotations

import typer

from weldray.pretrain.cli import pretrain

if __name__ == "__main__":
    typer.run(pretrain)
