"""SparK-style masked modelling (Tian et al., ICLR 2023) and its emulated sparse convolutions
(``sparse``)."""

from benchmark.methods.spark.method import SparK

__all__ = ["SparK"]
