"""Models: small ``nn.Module``s that score (user, item) pairs, one module per model, each with
its typed config and its ``ModelSpec`` (``torchcf.models.registry`` collects them)."""

from torchcf.models.base import FittedModel, ModelConfig, ModelSpec, ScoringModel
from torchcf.models.baselines import EASE, IALS, ItemKNN, Pop
from torchcf.models.blend import Blend
from torchcf.models.gmf import GMF
from torchcf.models.lightgcn import LightGCN
from torchcf.models.mf import BPRMF, MF
from torchcf.models.mlp import MLP
from torchcf.models.multvae import MultVAE
from torchcf.models.neumf import NeuMF

__all__ = [
    "BPRMF",
    "EASE",
    "GMF",
    "IALS",
    "MF",
    "MLP",
    "Blend",
    "FittedModel",
    "ItemKNN",
    "LightGCN",
    "ModelConfig",
    "ModelSpec",
    "MultVAE",
    "NeuMF",
    "Pop",
    "ScoringModel",
]
