"""``sdxl_turbo`` in the generator registry: a thin adapter from the generate job's tasks to
:class:`weldray.synthetic.diffusion.SdxlTurboGenerator` (img2img from a real train photo of the intended class).

This module imports diffusers only when the generator is built, so selecting ``copy_paste`` never loads it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from weldray.config import WeldrayConfig
from weldray.synthetic.base import Generated, Generator, GeneratorUnavailable, Task, round_robin


class SdxlTurboAdapter(Generator):
    name = "sdxl_turbo"

    def __init__(self, cfg: WeldrayConfig, sources: pd.DataFrame) -> None:
        from weldray.synthetic.diffusion import SdxlTurboGenerator

        super().__init__(cfg, sources)
        self.inner = SdxlTurboGenerator(cfg.synthetic)

    @classmethod
    def preflight(cls, cfg: WeldrayConfig) -> None:
        from weldray.synthetic.diffusion import check_weights

        check_weights(cfg.synthetic)

    @classmethod
    def plan(cls, cfg: WeldrayConfig, sources: pd.DataFrame) -> list[Task]:
        """Each class's images start from that class's own photos (the class prompt steers the details)."""
        tasks = []
        for index, label in enumerate(cfg.data.labels):
            own = sources.loc[sources["label"] == label, "relpath"].tolist()
            if not own:
                raise GeneratorUnavailable(f"sdxl_turbo: no {label} photo among the {len(sources)} source rows")
            tasks += round_robin(label, index, own, cfg.synthetic.n_per_class, cfg.synthetic.seed)
        return tasks

    def generate(self, tasks: list[Task]) -> list[Generated | Exception]:
        from PIL import Image

        results: list[Generated | Exception | None] = [None] * len(tasks)
        usable: list[tuple[int, Image.Image]] = []
        for i, task in enumerate(tasks):
            try:
                usable.append((i, Image.fromarray(self.load(task.source))))
            except (OSError, ValueError) as exc:  # a source broken since ingest: recorded, skipped
                results[i] = exc
        if usable:
            made = self.inner.generate([img for _, img in usable], [tasks[i].label for i, _ in usable],
                                       [tasks[i].seed for i, _ in usable])
            for (i, _), (image, params) in zip(usable, made, strict=True):
                results[i] = Generated(np.asarray(image.convert("RGB")), [tasks[i].source], params)
        return [r for r in results if r is not None]
