"""ssl3d: benchmark self-supervised pretraining for 3D medical volumes.

The installed import name is ``benchmark``; ``benchmark.methods`` (method plugins),
``benchmark.datasets`` (cohorts) and ``benchmark.configs`` (YAML) are the repository's
``methods/``, ``datasets/`` and ``configs/`` folders. docs/architecture.md draws the layers.
"""

from benchmark import deprecated_paths
from benchmark.registry import register_method

deprecated_paths.install()

__all__ = ["register_method"]
