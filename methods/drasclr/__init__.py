"""DrasCLR (Yu et al., Medical Image Analysis 2024) and its location-conditioned convolution
(``location_conv``)."""

from benchmark.methods.drasclr.method import DrasCLR

__all__ = ["DrasCLR"]
