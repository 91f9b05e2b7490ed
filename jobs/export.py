"""Ray job entrypoint for export:

    ray job submit --working-dir . -- \
        python jobs/export.py outputs/runs/<run_id> --format int8 [key=value ...]

Runs the export as a Ray task so that ``--format tensorrt`` lands on a GPU node (num_gpus=1).
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    import ray

    from weldray.config import load_config
    from weldray.logs import setup
    from weldray.ray_utils import init_ray

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="run directory or checkpoint file")
    parser.add_argument("--format", dest="fmt", choices=["onnx", "int8", "tensorrt"], default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (key=value)")
    args = parser.parse_args()
    setup()
    cfg = load_config(args.overrides)
    fmt = args.fmt or cfg.export.format
    init_ray(cfg.ray, job_name="export")

    @ray.remote(num_cpus=1, num_gpus=1 if fmt == "tensorrt" else 0)
    def run() -> tuple[str, dict]:
        from weldray.export import export_checkpoint

        result = export_checkpoint(args.source, cfg, fmt=fmt, output=args.output)
        return str(result.path), result.report

    try:
        path, report = ray.get(run.remote())
    finally:
        ray.shutdown()
    print(json.dumps(report, indent=2))
    print(path)


if __name__ == "__main__":
    main()
