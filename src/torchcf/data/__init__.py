"""Data: the ``Interactions`` currency, id maps, loaders and dataset downloads."""

from torchcf.data.interactions import IdMap, Interactions

__all__ = ["IdMap", "Interactions"]
