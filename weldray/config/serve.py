"""Ray Serve deployment and the inference API (``serve.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from weldray.config._base import ConfigError, check_choice, check_positive

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
INGRESSES = ("haproxy", "proxy")
PRECISIONS = ("auto", "fp32", "int8")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # HTTP ingress of a local Serve instance: haproxy = Ray's HAProxy ingress with direct ingress (HAProxy,
    # in C, forwards each request straight to a replica's own HTTP server: about 8 ms less per request and
    # 1.5x the throughput of proxy on 2 cores); proxy = Serve's Python proxy actor (one more Python hop).
    # Read when Ray starts: a cluster's nodes take it from their environment (cluster/kuberay/rayservice.yaml).
    ingress: str = "haproxy"
    # haproxy: seconds a stopping replica keeps answering while HAProxy stops routing to it (Ray's default
    # is 30 s, sized for cross-node routing; it is also how long a local shutdown waits).
    drain_period_s: float = 2.0
    # haproxy: how many times a request is sent to another replica when its own died before answering, or refused
    # the connection. Every route is idempotent (a classification changes nothing), so a retry is safe; what it
    # risks is a request that itself kills replicas taking a second one with it, hence one. 0: no retries (what was
    # in flight on a killed replica fails: 2-3 % of a run at concurrency 16 here; docs/export_and_serving.md#faults).
    retries: int = 1
    # haproxy: an upload of at most this many bytes is held whole by HAProxy before a replica is chosen (for at most
    # body_timeout_s), which is what lets it be retried; a larger one streams through and fails with its replica.
    # HAProxy's buffer (tune.bufsize) is this plus 32 KiB for the headers: up to about twice that per request in
    # progress.
    retry_body_bytes: int = 1_048_576
    # Replicas (HTTP + decoding + ONNX Runtime with dynamic batching, one process each), autoscaled
    # on ongoing requests. Two at least: when one dies, the other keeps answering while Serve restarts it (with one,
    # a SIGKILLed replica failed or hung a third of the requests of a 300-request run at concurrency 16, and service
    # was back after 53 s on a loaded 2-core machine; docs/export_and_serving.md#faults). Costs a second model in
    # memory and, at num_cpus_per_replica=1, two CPUs of Ray's.
    min_replicas: int = 2
    max_replicas: int = 2
    target_ongoing_requests: int = 4
    # HTTP requests one replica works on at once (Serve's limit; health checks included).
    max_ongoing_requests: int = 256
    # Images one replica holds (decoding, waiting for a batch, in a forward pass); a request that
    # would exceed it is answered 503 (JSON, Retry-After) at once instead of queueing without bound.
    max_pending_images: int = 64
    max_batch_size: int = 16
    # 0: a lone request runs at once; requests arriving during a forward pass form the next batch.
    # > 0 waits that long for a batch to fill (more throughput under bursty load, more latency).
    batch_wait_timeout_s: float = 0.0
    # Threads per replica decoding and resizing uploads, outside the batch.
    decode_threads: int = 2
    num_cpus_per_replica: float = 1.0
    # > 0 puts replicas on GPUs (pair with provider=cuda|tensorrt or auto).
    num_gpus_per_replica: float = 0.0
    # Execution provider: auto = TensorRT/CUDA when the replica has a GPU, else CPU. Never a silent fallback.
    provider: str = "auto"
    # ONNX Runtime intra-op threads per replica (0 = one per physical core).
    intra_op_threads: int = 0
    # Let idle ONNX Runtime threads spin: off, because a replica's decode threads (and the proxy)
    # share the cores; spinning threads starve them and slow everything down.
    ort_spinning: bool = False
    # Which model of an export a replica runs: auto = the INT8 model on CPU when `weldray export --format int8`
    # made one that passed its agreement gate and ran faster than fp32, else fp32; fp32 forces fp32, int8 the INT8
    # model (it must have passed the gate).
    precision: str = "auto"
    # Average with the horizontally flipped image (2x compute).
    tta: bool = False
    max_body_bytes: int = 20_000_000
    # Seconds a request's whole body may take to arrive; a slower one (a client trickling bytes to hold the
    # replica's slot and memory) is answered 408 JSON and its connection closed. 20 MB at 4 Mbit/s takes 40 s.
    body_timeout_s: float = 60.0
    max_image_pixels: int = 40_000_000
    max_batch_items: int = 64
    # Predictions whose confidence falls below this are flagged needs_review.
    review_threshold: float = 0.75
    # A `Server-Timing` header on /predict answers (read, decode, resize, wait, infer, encode, app in ms):
    # browsers' developer tools and benchmarks/serve_load.py show where a request's time goes. Off hides
    # the replica's timings from clients.
    server_timing: bool = True
    # A file holding an API key (one line): /predict, /predict/batch, /metadata and /model-card then need it as
    # `Authorization: Bearer KEY` or `X-API-Key: KEY` (401 JSON otherwise); /healthz, /readyz, the inspector page
    # and /docs stay open. Only the key's SHA-256 reaches the replicas. null: no authentication.
    api_key_file: str | None = None

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
            "max_pending_images",
            "decode_threads",
            "retry_body_bytes",
        ):
            check_positive(f"serve.{key}", getattr(self, key))
        if self.max_batch_items > self.max_pending_images:
            raise ConfigError(
                "serve.max_batch_items",
                f"must be <= serve.max_pending_images ({self.max_pending_images}), got {self.max_batch_items}: "
                "a larger /predict/batch request could never be admitted",
            )
        check_positive("serve.batch_wait_timeout_s", self.batch_wait_timeout_s, allow_zero=True)
        check_positive("serve.body_timeout_s", self.body_timeout_s)
        check_positive("serve.num_cpus_per_replica", self.num_cpus_per_replica, allow_zero=True)
        check_positive("serve.num_gpus_per_replica", self.num_gpus_per_replica, allow_zero=True)
        check_positive("serve.intra_op_threads", self.intra_op_threads, allow_zero=True)
        check_choice("serve.provider", self.provider, PROVIDERS)
        check_choice("serve.precision", self.precision, PRECISIONS)
        check_choice("serve.ingress", self.ingress, INGRESSES)
        check_positive("serve.drain_period_s", self.drain_period_s, allow_zero=True)
        check_positive("serve.retries", self.retries, allow_zero=True)
        if not 0.5 <= self.review_threshold <= 1.0:
            raise ConfigError("serve.review_threshold", f"must be in [0.5, 1], got {self.review_threshold}")
