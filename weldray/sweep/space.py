"""Space files (``tune_spaces/*.yaml``): loading and validation before any trial starts.

A space file is one study::

    sweep:                      # SweepConfig keys (num_samples, metric, mode, scheduler, ...)
      num_samples: 16
    overrides: [profile=cpu]    # fixed overrides of every trial (and of the default it is compared with)
    space:                      # searched config keys -> distribution
      model.margin: {type: float, low: 0.2, high: 0.6}
      training.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
      training.batch_size: {type: int, low: 8, high: 32, step: 8}
      training.optimizer: {type: choice, values: [adamw, ranger21]}

Every error names the file, the key and the reason (:class:`SpaceError`, a config error: exit code 2).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weldray.config import ConfigError, WeldrayConfig, conf_dir, load_config
from weldray.config.sweep import SweepConfig

#: Keys the sweep sets itself for every trial: searching or fixing them would break the trial/CV bookkeeping.
RESERVED = {
    "training.run_name": "each trial's run is named after the trial",
    "training.cv_fold": "trials validate on the manifest's val rows; folds are for the confirmation CV",
    "training.holdout": "trials always hold the val rows out (they are what a trial is judged on)",
    "data.root": "the data is the sweep's DATA argument",
}


@dataclass(frozen=True)
class Inert:
    """A key that changes nothing while ``unless`` (another key) keeps the value that ``inert`` tests."""

    unless: str
    inert: Callable[[WeldrayConfig], bool]
    reason: str


_NO_MARGIN = Inert(
    "model.head",
    lambda cfg: cfg.model.head == "softmax",
    "a softmax head has no margin or scale: fix model.head=arcface (or cosface) in the space's overrides or on "
    "the command line, or search model.head too",
)

_MIXUP_OFF = Inert(
    "training.mixup_prob",
    lambda cfg: cfg.training.mixup_prob == 0,
    "MixUp/CutMix is off (training.mixup_prob=0): fix training.mixup_prob > 0 in the space's overrides or on the "
    "command line, or search it too",
)

#: Keys that change nothing in the trials' fixed config (key -> when, and why): a search over them would only
#: fit noise. Searching the ``unless`` key as well makes them live.
INERT = {
    "training.mix_real_ratio": Inert(
        "training.synthetic_data",
        lambda cfg: cfg.training.synthetic_data is None,
        "inert until a synthetic dataset is configured: fix training.synthetic_data=DIR (a `weldray generate` "
        "output made from the trials' train rows) in the space's overrides or on the command line",
    ),
    "model.margin": _NO_MARGIN,
    "model.scale": _NO_MARGIN,
    "training.mixup_alpha": _MIXUP_OFF,
    "training.cutmix_alpha": _MIXUP_OFF,
}

DIST_TYPES = ("float", "int", "choice")


class SpaceError(ConfigError):
    """A space file that cannot be run; the message is ``FILE: KEY: reason``."""

    def __init__(self, path: Path | str, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}", message)


@dataclass
class Dist:
    """One searched key: ``float``/``int`` between ``low`` and ``high`` (inclusive; ``log`` or ``step``), or
    ``choice`` among ``values``."""

    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: list[Any] | None = None

    def optuna_distribution(self) -> Any:
        """The Optuna distribution: OptunaSearch samples it, and the report's study is rebuilt with it."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "choice":
            return CategoricalDistribution(self.values)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def extremes(self) -> list[Any]:
        """The values whose acceptance by the config proves the whole range is accepted (the config's checks
        are intervals and choices)."""
        if self.type == "choice":
            return list(self.values)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass
class Study:
    """A validated space file with its settings and the fixed overrides every trial starts from."""

    path: Path
    sweep: SweepConfig
    overrides: list[str]
    space: dict[str, Dist] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.sweep.name or self.path.stem

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """The overrides of one trial: the fixed ones, then its sampled values."""
        return [*self.overrides, *(f"{k}={format_value(v)}" for k, v in params.items())]


def format_value(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def spaces_dir() -> Path:
    """``tune_spaces/`` beside ``conf/`` (the repository root, also inside a Ray job's working_dir)."""
    return conf_dir().parent / "tune_spaces"


def resolve_space(space: str) -> Path:
    """A path, or a name in ``tune_spaces/`` (with or without ``.yaml``)."""
    path = Path(space)
    if path.is_file():
        return path
    for candidate in (spaces_dir() / space, spaces_dir() / f"{space}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in spaces_dir().glob("*.yaml"))
    raise FileNotFoundError(f"space file {space!r} not found (a path, or one of {names} in {spaces_dir()})")


def _field_type(key: str) -> Any:
    """The declared type of a dotted config key (``Optional[X]`` -> ``X``), or None when no such key exists."""
    cls: Any = WeldrayConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        tp = hints[part]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is typing.Union and len(args) == 1:
            tp = args[0]
        if i == len(parts) - 1:
            return typing.get_origin(tp) or tp
        cls = tp
    return None


def _fits(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _parse_dist(path: Path, key: str, spec: Any) -> Dist:
    if not isinstance(spec, dict) or spec.get("type") not in DIST_TYPES:
        raise SpaceError(path, key, f"needs a mapping with type one of {list(DIST_TYPES)}, got {spec!r}")
    allowed = {"type", "values"} if spec["type"] == "choice" else {"type", "low", "high", "log", "step"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise SpaceError(path, key, f"unknown field(s) {extra} for a {spec['type']} distribution")
    dist = Dist(**spec)
    if dist.type == "choice":
        if not isinstance(dist.values, list) or not dist.values:
            raise SpaceError(path, key, "a choice needs a non-empty list of values")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in dist.values):
            raise SpaceError(path, key, f"choice values must be numbers, strings, booleans or null, got {dist.values}")
        return dist
    for bound in ("low", "high"):
        if not isinstance(getattr(dist, bound), (int, float)) or isinstance(getattr(dist, bound), bool):
            raise SpaceError(path, key, f"{bound} must be a number, got {getattr(dist, bound)!r}")
    if dist.type == "int" and not all(isinstance(v, int) for v in (dist.low, dist.high, dist.step or 1)):
        raise SpaceError(path, key, f"an int range needs integer low/high/step, got {spec}")
    if not dist.low < dist.high:
        raise SpaceError(path, key, f"low must be < high, got [{dist.low}, {dist.high}]")
    if dist.log and dist.low <= 0:
        raise SpaceError(path, key, f"a log range needs low > 0, got {dist.low}")
    if dist.log and dist.step:
        raise SpaceError(path, key, "log and step cannot be combined")
    if dist.step is not None and dist.step <= 0:
        raise SpaceError(path, key, f"step must be > 0, got {dist.step}")
    return dist


def load_sweep_config(path: Path, block: Any, cli: Sequence[str]) -> SweepConfig:
    """``conf/sweep/default.yaml`` <- the space file's ``sweep:`` block <- ``sweep.key=value`` items."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(
            OmegaConf.merge(
                OmegaConf.structured(SweepConfig),
                OmegaConf.load(conf_dir() / "sweep" / "default.yaml"),
                OmegaConf.create(block or {}),
                OmegaConf.from_dotlist([item.removeprefix("sweep.") for item in cli]),
            )
        )
    except ConfigError as exc:
        raise SpaceError(path, exc.key, str(exc).split(": ", 1)[1]) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "sweep"
        raise SpaceError(path, f"sweep.{key}", str(exc).splitlines()[0]) from None


def load_space(space: str | Path, overrides: Sequence[str] = ()) -> Study:
    """Load and validate a space file with the command line's ``key=value`` items (``sweep.*`` ones set the
    sweep, the rest are fixed overrides of every trial). Raises :class:`SpaceError` before any trial starts."""
    import yaml

    path = resolve_space(str(space))
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpaceError(path, "file", f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise SpaceError(path, "file", "must be a mapping with sweep/overrides/space")
    unknown = sorted(set(doc) - {"sweep", "overrides", "space"})
    if unknown:
        raise SpaceError(path, unknown[0], "unknown top-level key (expected sweep, overrides, space)")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "overrides must look like key=value (e.g. sweep.num_samples=20)")
    cli_sweep = [o for o in overrides if o.startswith("sweep.")]
    fixed = [*(doc.get("overrides") or []), *(o for o in overrides if not o.startswith("sweep."))]
    sweep = load_sweep_config(path, doc.get("sweep"), cli_sweep)
    space_doc = doc.get("space") or {}
    if not isinstance(space_doc, dict) or not space_doc:
        raise SpaceError(path, "space", "needs at least one searched key")

    space: dict[str, Dist] = {}
    for key, spec in space_doc.items():
        if key in RESERVED:
            raise SpaceError(path, key, f"set by the sweep: {RESERVED[key]}")
        tp = _field_type(key)
        if tp is None or dataclasses.is_dataclass(tp):
            raise SpaceError(path, key, "unknown config key (not a value of weldray.config.WeldrayConfig)")
        dist = _parse_dist(path, key, spec)
        if dist.type == "float" and tp is not float:
            raise SpaceError(path, key, f"a float range does not fit a key of type {tp.__name__}")
        if dist.type == "int" and tp not in (int, float):
            raise SpaceError(path, key, f"an int range does not fit a key of type {tp.__name__}")
        for value in dist.extremes():
            if not _fits(value, tp):
                raise SpaceError(path, key, f"value {value!r} does not fit a key of type {tp.__name__}")
        space[key] = dist
    for item in fixed:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in space:
            raise SpaceError(path, key, f"searched by this space and also fixed by the override {item!r}")
        if key in RESERVED:
            raise SpaceError(path, key, f"set by the sweep: {RESERVED[key]}")

    study = Study(path=path, sweep=sweep, overrides=list(fixed), space=space)
    # The fixed overrides alone, then each searched key at its extremes with the others at their defaults:
    # every check the config makes runs here, on the driver, before Ray starts.
    try:
        fixed_cfg = load_config(study.overrides)
    except ConfigError as exc:
        raise SpaceError(path, exc.key, f"{str(exc).split(': ', 1)[1]} (in the fixed overrides)") from None
    for key, dist in space.items():
        for value in dist.extremes():
            try:
                load_config(study.trial_overrides({key: value}))
            except ConfigError as exc:
                raise SpaceError(path, key, f"the config rejects {value!r}: {str(exc).split(': ', 1)[1]}") from None
    for key in space:
        rule = INERT.get(key)
        if rule and rule.unless not in space and rule.inert(fixed_cfg):
            raise SpaceError(path, key, rule.reason)
    return study
