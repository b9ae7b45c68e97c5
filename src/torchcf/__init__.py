"""torchcf: collaborative filtering from implicit feedback, in PyTorch."""

__version__ = "0.1.0"
