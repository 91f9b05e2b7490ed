"""Shared by the cluster tests."""

# The pipeline as a job, small but real: Ray Train DDP with two half-CPU workers on the default head (2 CPUs) +
# worker (1 CPU), from the pip-shipped ImageNet weights (quick_test alone trains from random init).
PIPELINE_OVERRIDES = [
    "profile=quick_test", "training.num_workers=2", "training.cpus_per_worker=0.5", "model.pretrained=true"
]
