"""The generator interface and registry (``synthetic.generator``).

A generator turns real train photos into synthetic ones. The generate job (weldray.synthetic.job) asks it for a
plan, a list of :class:`Task` (intended label, primary source photo, seed; ``(source, seed)`` is the resume key),
and then, inside Ray Data actors, for one :class:`Generated` per task: the image, the ids of every real photo
that went into it (lineage: training refuses images whose sources it does not train on) and its parameters.

Generators register by name like timm models (``@register("copy_paste")``); a heavy one registers a factory
that imports its module only when selected, so ``copy_paste`` never imports diffusers.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from weldray.config import WeldrayConfig


class GeneratorUnavailable(RuntimeError):
    """The selected generator cannot make images from these sources; the message says why and what to do."""


@dataclass(frozen=True)
class Task:
    """One synthetic image to make: ``label`` is its intended class, ``source`` the id (manifest relpath) of
    the photo it starts from, ``seed`` its random seed."""

    label: str
    source: str
    seed: int

    @property
    def name(self) -> str:
        """File stem of the image: unique per (label, source, seed)."""
        stem = self.source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return f"syn_{self.label}_{stem}_{self.seed}"


@dataclass
class Generated:
    image: np.ndarray  # uint8 HxWx3 RGB
    source_ids: list[str]  # every real photo that influenced the image (the task's source first)
    params: dict[str, Any] = field(default_factory=dict)


class Generator(ABC):
    """Built once per Ray Data actor from the config and the train rows it may use as sources."""

    name: str = ""

    def __init__(self, cfg: WeldrayConfig, sources: pd.DataFrame) -> None:
        self.cfg = cfg
        self.sources = sources.set_index("relpath", drop=False)

    @classmethod
    def preflight(cls, cfg: WeldrayConfig) -> None:
        """Checks on the driver before Ray starts (missing weights fail here, once, with their name); copy_paste
        needs nothing beyond the photos its plan checks."""
        return None

    @classmethod
    @abstractmethod
    def plan(cls, cfg: WeldrayConfig, sources: pd.DataFrame) -> list[Task]:
        """The tasks for ``synthetic.n_per_class`` images per class (raises :class:`GeneratorUnavailable`)."""

    @abstractmethod
    def generate(self, tasks: list[Task]) -> list[Generated | Exception]:
        """One result per task; a task whose source photo cannot be used gives an exception (recorded, skipped)."""

    def load(self, relpath: str) -> np.ndarray:
        """A source photo as uint8 RGB (cached: patch sources are read again and again)."""
        return _load(self.sources.at[relpath, "path"])


@functools.lru_cache(maxsize=64)
def _load(path: str) -> np.ndarray:
    from weldray.preprocessing import load_image

    return np.asarray(load_image(path))


def task_seed(base: int, label_index: int, i: int) -> int:
    """The seed of a class's i-th image: independent streams per (synthetic.seed, class, index)."""
    return int(np.random.SeedSequence([base, label_index, i]).generate_state(1)[0])


def round_robin(label: str, label_index: int, sources: list[str], n: int, seed: int) -> list[Task]:
    """``n`` tasks cycling over ``sources`` (sorted, so the plan does not depend on row order)."""
    sources = sorted(sources)
    return [Task(label, sources[i % len(sources)], task_seed(seed, label_index, i)) for i in range(n)]


_REGISTRY: dict[str, Callable[[], type[Generator]]] = {}


def register(name: str) -> Callable[[type[Generator]], type[Generator]]:
    """Class decorator: make a generator selectable as ``synthetic.generator=<name>``."""

    def wrap(cls: type[Generator]) -> type[Generator]:
        cls.name = name
        _REGISTRY[name] = lambda: cls
        return cls

    return wrap


def register_lazy(name: str, loader: Callable[[], type[Generator]]) -> None:
    """Register a generator whose module is imported only when it is selected."""
    _REGISTRY[name] = loader


def generator_class(name: str) -> type[Generator]:
    _import_builtin()
    if name not in _REGISTRY:
        raise GeneratorUnavailable(f"synthetic.generator={name!r}: no such generator (known: {list_generators()})")
    return _REGISTRY[name]()


def list_generators() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def _sdxl_turbo() -> type[Generator]:
    from weldray.synthetic.sdxl import SdxlTurboAdapter

    return SdxlTurboAdapter


def _import_builtin() -> None:
    import weldray.synthetic.copy_paste  # noqa: F401  (registers copy_paste)

    if "sdxl_turbo" not in _REGISTRY:
        register_lazy("sdxl_turbo", _sdxl_turbo)
