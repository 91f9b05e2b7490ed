"""The ``sdxl_turbo`` generator: img2img from real photos through SDXL(-Turbo) + ControlNet Tile.

Each synthetic image starts from a real photo (the img2img init image and, resized, the tile control image), so
it keeps the photo's layout and the ControlNet keeps its texture while the class prompt (the same class tokens as
the LoRA's captions, :data:`CLASS_PROMPTS`) steers the details. Weights come from local ``save_pretrained``
folders or, when online, hub ids; :func:`check_weights` fails before any worker starts when one is missing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weldray.config.synthetic import SyntheticConfig
from weldray.text_removal.detectors import MissingWeightsError, resolve_device

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

#: Prompt per class label. The LoRA is trained with these captions, so its class tokens mean the same at generation.
CLASS_PROMPTS: dict[str, str] = {
    "good_weld": "a photo of a good weld, clean uniform weld bead",
    "bad_weld": "a photo of a bad weld with defects, porosity cracks spatter",
}
#: The file ``save_lora_weights`` writes into a LoRA folder.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def class_prompt(label: str) -> str:
    """The prompt (generation) and caption (LoRA training) of a class label; labels other than weldray's two
    (``data.classes`` is configurable) are described by their own words."""
    return CLASS_PROMPTS.get(label) or f"a photo of a weld, {label.replace('_', ' ')}"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, but at call time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: a local folder, or a hub id (downloaded by diffusers when online)."""

    key: str  # the config key, for messages
    name: str  # as configured
    local_dir: Path | None

    @property
    def load_from(self) -> str:
        return str(self.local_dir) if self.local_dir is not None else self.name

    @property
    def local_files_only(self) -> bool:
        return self.local_dir is not None or hub_offline()


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def _weights_in(folder: Path) -> bool:
    return any(p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir() if p.is_file())


def _missing(source: ModelSource, what: str, how: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"synthetic.{source.key}={source.name!r}: {what}. {how} "
        "weldray never downloads weights when HF_HUB_OFFLINE=1."
    )


def _save_hint(source: ModelSource, cls: str) -> str:
    hub = source.name if _looks_like_hub_id(source.name) else "<hub id>"
    return (
        f"On a machine with network access run `{cls}.from_pretrained({hub!r}).save_pretrained(<folder>)` "
        f"(or `hf download {hub} --local-dir <folder>`), copy the folder here and set synthetic.{source.key}=<folder>."
    )


def _check_local_pipeline(source: ModelSource, folder: Path) -> None:
    index = folder / "model_index.json"
    hint = _save_hint(source, "StableDiffusionXLPipeline")
    if not index.is_file():
        raise _missing(source, f"{index} not found (not a diffusers pipeline folder)", hint)
    components = json.loads(index.read_text())
    for name in _SDXL_COMPONENTS:
        entry = components.get(name)
        if not isinstance(entry, list) or entry[0] is None:
            raise _missing(source, f"{index} has no {name!r}: not an SDXL pipeline", hint)
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise _missing(source, f"component folder {sub} is missing or empty", hint)
        if not name.startswith(("tokenizer", "scheduler")):
            _check_model_folder(source, sub, hint)


def _check_model_folder(source: ModelSource, folder: Path, hint: str) -> None:
    if not (folder / "config.json").is_file():
        raise _missing(source, f"{folder / 'config.json'} not found", hint)
    if not _weights_in(folder):
        raise _missing(source, f"no weight file (*.safetensors / *.bin) in {folder}", hint)


def _check_hub(source: ModelSource, filename: str, cls: str) -> None:
    """Offline: the hub id must be in the local Hugging Face cache. Online: it must exist on the hub."""
    import huggingface_hub

    hint = _save_hint(source, cls)
    if hub_offline():
        if not isinstance(huggingface_hub.try_to_load_from_cache(source.name, filename), str):
            raise _missing(
                source,
                f"no local folder of that name, and hub id {source.name!r} is not in the Hugging Face cache "
                f"({huggingface_hub.constants.HF_HUB_CACHE})",
                hint,
            )
        return
    try:
        found = huggingface_hub.file_exists(source.name, filename)
    except Exception as exc:  # network errors of every kind: the message says what was tried
        raise _missing(source, f"no local folder of that name, and the hub could not be asked ({exc})", hint) from exc
    if not found:
        raise _missing(source, f"no local folder of that name, and no {filename} in hub repo {source.name!r}", hint)


def resolve_source(cfg: SyntheticConfig, key: str) -> ModelSource:
    """``synthetic.<key>`` as a local folder when one exists there, else as a hub id."""
    name = getattr(cfg, key)
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource(key, name, path.resolve())
    if not _looks_like_hub_id(name):
        raise MissingWeightsError(
            f"synthetic.{key}={name!r}: folder {path} not found (and the name is not a hub id 'owner/name'). "
            f"Save the model there with save_pretrained or set synthetic.{key} to its folder."
        )
    return ModelSource(key, name, None)


def lora_file(cfg: SyntheticConfig) -> Path | None:
    """The LoRA weights file of ``synthetic.lora_path`` (a file or the folder `weldray train-lora` wrote)."""
    if cfg.lora_path is None:
        return None
    path = Path(cfg.lora_path).expanduser()
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    if not path.is_file():
        raise MissingWeightsError(
            f"synthetic.lora_path={cfg.lora_path!r}: LoRA weights {path} not found. Train them with "
            "`weldray train-lora` (it writes <folder>/" + LORA_WEIGHT_NAME + ") or set synthetic.lora_path=null."
        )
    return path


def check_weights(cfg: SyntheticConfig, *, generation: bool = True) -> None:
    """Fail fast (on the driver, before Ray or any worker starts) when a configured model cannot be loaded.

    ``generation``: also the ControlNet and the LoRA of ``synthetic.lora_path``; LoRA training
    (``generation=False``) needs the SDXL pipeline only. (Sampling settings are validated by SyntheticConfig.)
    """
    sdxl = resolve_source(cfg, "sdxl_model")
    if sdxl.local_dir is not None:
        _check_local_pipeline(sdxl, sdxl.local_dir)
    else:
        _check_hub(sdxl, "model_index.json", "StableDiffusionXLPipeline")
    if not generation:
        return
    cn = resolve_source(cfg, "controlnet_model")
    if cn.local_dir is not None:
        _check_model_folder(cn, cn.local_dir, _save_hint(cn, "ControlNetModel"))
    else:
        _check_hub(cn, "config.json", "ControlNetModel")
    lora_file(cfg)


def torch_device_dtype(device: str = "auto") -> tuple[Any, Any]:
    """CUDA + fp16 when a GPU exists (or is asked for), else CPU + fp32."""
    import torch

    dev = torch.device(resolve_device(device))
    return dev, torch.float16 if dev.type == "cuda" else torch.float32


def load_pretrained(source: ModelSource, loader: Any, *args: Any, **kwargs: Any) -> Any:
    """``loader(source, ...)`` with diffusers' load errors turned into one message that names the model."""
    try:
        return loader(source.load_from, *args, local_files_only=source.local_files_only, **kwargs)
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(f"synthetic.{source.key}={source.name!r} could not be loaded: {exc}") from exc


def configure_scheduler(pipe: Any, base_model: str) -> None:
    """Turbo samples with ancestral Euler on trailing timesteps (as distilled); base keeps its own scheduler."""
    if base_model == "turbo":
        from diffusers import EulerAncestralDiscreteScheduler

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")


def output_size(width: int, height: int, image_size: int, multiple: int) -> tuple[int, int]:
    """The source's aspect ratio with its long side ``image_size``, both sides multiples of ``multiple``."""
    scale = image_size / max(width, height)
    w, h = (max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))
    return w, h


class SdxlTurboGenerator:
    """Loads the pipeline once (per Ray actor) and turns batches of real photos into synthetic ones."""

    def __init__(self, cfg: SyntheticConfig, device: str = "auto") -> None:
        check_weights(cfg)
        from diffusers import ControlNetModel, StableDiffusionXLControlNetImg2ImgPipeline

        self.cfg = cfg
        self.device, self.dtype = torch_device_dtype(device)
        sdxl, cn = resolve_source(cfg, "sdxl_model"), resolve_source(cfg, "controlnet_model")
        controlnet = load_pretrained(cn, ControlNetModel.from_pretrained, dtype=self.dtype)
        pipe = load_pretrained(
            sdxl,
            StableDiffusionXLControlNetImg2ImgPipeline.from_pretrained,
            controlnet=controlnet,
            dtype=self.dtype,
        )
        configure_scheduler(pipe, cfg.base_model)
        lora = lora_file(cfg)
        if lora is not None:
            pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
            logger.info("LoRA %s loaded", lora)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        self.guidance_scale = cfg.sampling_guidance_scale
        self.model_ids = {
            "sdxl_model": cfg.sdxl_model,
            "controlnet_model": cfg.controlnet_model,
            "base_model": cfg.base_model,
            "lora_path": str(lora) if lora is not None else None,
        }

    def generate(
        self, images: list[Image], labels: list[str], seeds: list[int]
    ) -> list[tuple[Image, dict[str, Any]]]:
        """One synthetic image per (source photo, class label, seed), in input order, each with its parameters.

        Sources of one output size run as one batch; every image draws its noise from its own generator, so an
        image depends on its seed, label and source only (up to float rounding: a batched kernel can move a pixel
        by one grey level against a single-image run).
        """
        import PIL.Image
        import torch

        if not len(images) == len(labels) == len(seeds):
            raise ValueError(f"images, labels and seeds differ in length: {len(images)}, {len(labels)}, {len(seeds)}")
        prompts = [class_prompt(label) for label in labels]
        sources = []
        for image in images:
            size = output_size(*image.size, self.cfg.image_size, self.multiple)
            sources.append(image.convert("RGB").resize(size, PIL.Image.Resampling.BICUBIC))
        results: list[tuple[Image, dict[str, Any]] | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, src in enumerate(sources):
            by_size.setdefault(src.size, []).append(i)
        for (width, height), idx in by_size.items():
            batch = [sources[i] for i in idx]
            with torch.inference_mode():
                out = self.pipe(
                    prompt=[prompts[i] for i in idx],
                    image=batch,
                    control_image=batch,  # ControlNet Tile: the photo itself conditions the texture
                    width=width,
                    height=height,
                    strength=self.cfg.strength,
                    num_inference_steps=self.cfg.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    controlnet_conditioning_scale=self.cfg.controlnet_conditioning_scale,
                    generator=[torch.Generator(self.device).manual_seed(seeds[i]) for i in idx],
                ).images
            for i, image in zip(idx, out, strict=True):
                results[i] = (image, self._params(prompts[i], seeds[i], width, height))
        return results  # type: ignore[return-value]

    def _params(self, prompt: str, seed: int, width: int, height: int) -> dict[str, Any]:
        return {
            "prompt": prompt,
            "seed": seed,
            "strength": self.cfg.strength,
            "num_inference_steps": self.cfg.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "controlnet_conditioning_scale": self.cfg.controlnet_conditioning_scale,
            "width": width,
            "height": height,
            **self.model_ids,
        }
