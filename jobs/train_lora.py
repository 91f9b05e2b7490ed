"""Ray job entry point for LoRA fine-tuning: same arguments as ``weldray train-lora``.

ray job submit --working-dir . --entrypoint-num-gpus 1 -- python jobs/train_lora.py INPUT OUTPUT [key=value ...]
python jobs/train_lora.py INPUT OUTPUT [key=value ...]
"""

from __future__ import annotations

import typer

from weldray.synthetic.cli import train_lora

if __name__ == "__main__":
    typer.run(train_lora)
