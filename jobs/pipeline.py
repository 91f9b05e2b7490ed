"""Ray job entrypoint: the whole pipeline.

    python jobs/pipeline.py [DATA] [key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/pipeline.py [DATA] [key=value ...]

Prints the run directory (exported model + report) as the last line.
"""

from __future__ import annotations

import sys

from weldray.cli import app

if __name__ == "__main__":
    sys.exit(app(["pipeline", *sys.argv[1:]]))
