"""Building blocks of every method: the shared 3D ResNet18, decoders, momentum copies, optimisers."""
