"""The no-pretraining baseline."""

from benchmark.method import SSLMethod
from benchmark.registry import register_method


@register_method("scratch")
class Scratch(SSLMethod):
    """Random initialisation, no pretraining: the floor every SSL method must beat."""

    reference = "the random-init baseline of Bhattacharya et al., Int J CARS 2024"
    needs_pretraining = False
