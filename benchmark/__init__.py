"""ssl3d: benchmark self-supervised pretraining for 3D medical volumes.

The installed import name is ``benchmark``; ``benchmark.methods`` (method plugins),
``benchmark.datasets`` (cohorts) and ``benchmark.configs`` (YAML) are the repository's
``methods/``, ``datasets/`` and ``configs/`` folders.
"""

from benchmark.registry import register_method

__all__ = ["register_method"]
