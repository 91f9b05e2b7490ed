"""``weldray pretrain``."""

from __future__ import annotations

import typer

from weldray.cli_utils import exit_on_user_error, print_result
from weldray.ray_utils import own_ray


def pretrain(
    data: str = typer.Argument(..., help="Folder, s3:// URI or manifest.parquet with the photos (labels unused)."),
    overrides: list[str] | None = typer.Argument(
        None, help="Hydra overrides, e.g. pretrain.epochs=20 model.backbone=vit_small_patch14_dinov2.lvd142m."
    ),
) -> None:
    """Self-supervised DINO warm-up of the classifier's backbone on DATA with Ray Train; prints the run
    directory last (its backbone.safetensors is for `weldray train DATA model.weights=...`)."""

    from weldray.config import load_config
    from weldray.pretrain import pretrain as run_pretrain

    with exit_on_user_error(), own_ray():
        run_dir = run_pretrain(load_config([*(overrides or []), f"data.root={data}"]))
    print_result(run_dir)
