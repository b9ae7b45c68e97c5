"""Baselines fitted without gradient steps: popularity, item-kNN, EASE and iALS.

They share the scoring contract of every model, so the trainer, evaluation, persistence,
compare and serving take them as they are; the trainer calls their ``fit_epoch`` instead of
stepping an optimizer.
"""

from torchcf.models.baselines.ease import EASE
from torchcf.models.baselines.ials import IALS
from torchcf.models.baselines.itemknn import ItemKNN
from torchcf.models.baselines.pop import Pop

__all__ = ["EASE", "IALS", "ItemKNN", "Pop"]
