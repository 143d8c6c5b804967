"""``python -m benchmark`` is the same as the ``ssl3d`` command."""

from benchmark.cli import main

main()
