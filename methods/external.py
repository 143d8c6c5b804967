"""An encoder made elsewhere, evaluated through the grid like a pretrained method's."""

from benchmark.method import SSLMethod
from benchmark.registry import register_method


@register_method("external")
class External(SSLMethod):
    """A shared encoder (``finetune.encoder``: a ``model.safetensors`` of ``ssl3d export``,
    another tool's MONAI ResNet18 state dict, or an ``encoder.pt``), not pretrained here.

    Its cells start from that file as a method's cells start from its pretraining, so it is
    compared with every method under the same protocols, splits and seeds. The file's SHA-256
    is part of each cell's config hash: a changed file is evaluated again.
    """

    reference = "the encoder's own (see its model card); evaluated as in ssl3d's protocol"
    needs_pretraining = False
    shared_encoder = True
