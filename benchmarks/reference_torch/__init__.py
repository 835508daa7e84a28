"""A plain PyTorch reference of the speed workloads (the textbook way: functional calls, autograd, create_graph).

Used by ``benchmarks/speed.py --impl torch`` and ``benchmarks/check_gradients.py`` as the figure metalab must beat.
It imports only torch and NumPy (no metalab, no TensorFlow), so its process measures PyTorch alone.
"""

from .workloads import Conv4, anil_meta_loss, make_evaluate, make_step, maml_meta_loss, protonet_loss, reptile_update

__all__ = ["Conv4", "anil_meta_loss", "make_evaluate", "make_step", "maml_meta_loss", "protonet_loss",
           "reptile_update"]
