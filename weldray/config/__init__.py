"""One Hydra config for every stage.

``load_config(overrides)`` composes ``conf/config.yaml`` (profile ``cpu`` by default) with
``key=value`` overrides, checks types and unknown keys against the dataclass schema, and
returns a validated :class:`WeldrayConfig`. Errors name the offending key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weldray.config._base import ConfigError, check_choice
from weldray.config.data import DataConfig, ProceduralConfig
from weldray.config.export import ExportConfig
from weldray.config.model import ModelConfig
from weldray.config.pipeline import PipelineConfig
from weldray.config.pretrain import PretrainConfig
from weldray.config.ray import RayConfig
from weldray.config.serve import ServeConfig
from weldray.config.synthetic import SyntheticConfig
from weldray.config.text_removal import TextRemovalConfig
from weldray.config.training import TrainingConfig

PROFILES = ("quick_test", "cpu", "production")

__all__ = [
    "PROFILES",
    "ConfigError",
    "DataConfig",
    "ExportConfig",
    "ModelConfig",
    "PipelineConfig",
    "PretrainConfig",
    "ProceduralConfig",
    "RayConfig",
    "ServeConfig",
    "SyntheticConfig",
    "TextRemovalConfig",
    "TrainingConfig",
    "WeldrayConfig",
    "conf_dir",
    "load_config",
]


@dataclass
class WeldrayConfig:
    profile: str = "cpu"
    # Training's data order, augmentation and MixUp draw from it: the same seed trains the same model (one worker).
    seed: int = 42
    # Root for run directories, dataset manifests and logs (local folder).
    output_dir: str = "outputs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    text_removal: TextRemovalConfig = field(default_factory=TextRemovalConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        check_choice("profile", self.profile, PROFILES)
        t = self.training
        if t.mix_real_ratio < 1 and self.synthetic.generator == "none" and t.synthetic_data is None:
            raise ConfigError(
                "training.mix_real_ratio",
                f"{t.mix_real_ratio} needs synthetic images: choose synthetic.generator (copy_paste, sdxl_turbo) "
                "or set training.synthetic_data to a `weldray generate` output",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Short stable hash of the whole config (job metadata, run names)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def conf_dir() -> Path:
    """The Hydra config folder: ``$WELDRAY_CONF_DIR``, else ``conf/`` beside the package."""
    env = os.environ.get("WELDRAY_CONF_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"weldray config folder not found at {path} (expected {path / 'config.yaml'}); "
            "set WELDRAY_CONF_DIR to the repository's conf/ folder"
        )
    return path


def load_config(overrides: Sequence[str] = ()) -> WeldrayConfig:
    """Compose the config with Hydra overrides such as ``training.epochs=50`` or ``profile=production``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for item in overrides:
        if "=" not in item and not item.startswith("~"):
            raise ConfigError(item, "overrides must look like key=value (e.g. training.epochs=5)")
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            raw = compose(config_name="config", overrides=list(overrides))
        schema = OmegaConf.structured(WeldrayConfig)
        merged = OmegaConf.merge(schema, raw)
        return OmegaConf.to_object(merged)  # runs every __post_init__
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(str(key), str(exc).splitlines()[0]) from None
    except HydraException as exc:
        raise ConfigError("overrides", " ".join(str(exc).split())) from None
