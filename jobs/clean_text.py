"""Ray job entry point for text removal: same arguments as ``weldray clean``.

ray job submit --working-dir . -- python jobs/clean_text.py INPUT OUTPUT [key=value ...]
python jobs/clean_text.py INPUT OUTPUT [key=value ...]        # local Ray instance
"""

from __future__ import annotations

import typer

from weldray.text_removal.cli import clean

if __name__ == "__main__":
    typer.run(clean)
