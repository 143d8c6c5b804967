"""The residual-reconstruction method (Bhattacharya et al., Int J CARS 2024) and its helpers:
the CAE (``cae``), the residual targets (``targets``) and the residual figure (``figure``)."""

from benchmark.methods.residual.method import Residual

__all__ = ["Residual"]
