"""Ray Serve deployment and the inference API (``serve.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from weldray.config._base import ConfigError, check_choice, check_positive

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # Model replicas (ONNX Runtime + dynamic batching), autoscaled on ongoing requests.
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: int = 4
    max_ongoing_requests: int = 16
    # Requests waiting for a model replica beyond this are answered 503 (JSON) at once; -1 = no limit.
    max_queued_requests: int = 64
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005
    num_cpus_per_replica: float = 1.0
    # > 0 puts model replicas on GPUs (pair with provider=cuda|tensorrt or auto).
    num_gpus_per_replica: float = 0.0
    # HTTP ingress replicas (validation + decoding) and their concurrency.
    ingress_replicas: int = 1
    ingress_max_ongoing_requests: int = 256
    # Execution provider: auto = TensorRT/CUDA when the replica has a GPU, else CPU. Never a silent fallback.
    provider: str = "auto"
    # ONNX Runtime intra-op threads per replica (0 = ONNX Runtime's default).
    intra_op_threads: int = 0
    # Average with the horizontally flipped image (2x compute).
    tta: bool = False
    max_body_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    max_batch_items: int = 64
    # Predictions whose confidence falls below this are flagged needs_review.
    review_threshold: float = 0.75

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError("serve.port", f"must be a TCP port, got {self.port}")
        check_positive("serve.min_replicas", self.min_replicas, allow_zero=True)
        if self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(
                "serve.max_replicas", f"must be >= max(1, min_replicas), got {self.max_replicas}"
            )
        for key in (
            "target_ongoing_requests",
            "max_ongoing_requests",
            "max_batch_size",
            "max_body_bytes",
            "max_image_pixels",
            "max_batch_items",
            "ingress_replicas",
            "ingress_max_ongoing_requests",
        ):
            check_positive(f"serve.{key}", getattr(self, key))
        if self.max_queued_requests < 1 and self.max_queued_requests != -1:
            raise ConfigError(
                "serve.max_queued_requests", f"must be -1 (no limit) or > 0, got {self.max_queued_requests}"
            )
        check_positive("serve.batch_wait_timeout_s", self.batch_wait_timeout_s, allow_zero=True)
        check_positive("serve.num_cpus_per_replica", self.num_cpus_per_replica, allow_zero=True)
        check_positive("serve.num_gpus_per_replica", self.num_gpus_per_replica, allow_zero=True)
        check_positive("serve.intra_op_threads", self.intra_op_threads, allow_zero=True)
        check_choice("serve.provider", self.provider, PROVIDERS)
        if not 0.5 <= self.review_threshold <= 1.0:
            raise ConfigError("serve.review_threshold", f"must be in [0.5, 1], got {self.review_threshold}")
