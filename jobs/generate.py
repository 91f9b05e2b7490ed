"""Ray job entry point for synthetic welds: same arguments as ``weldray generate``.

ray job submit --working-dir . -- python jobs/generate.py INPUT OUTPUT [key=value ...]
python jobs/generate.py INPUT OUTPUT [key=value ...]        # local Ray instance
"""

from __future__ import annotations

import typer

from weldray.synthetic.cli import generate

if __name__ == "__main__":
    typer.run(generate)
