"""Models: small ``nn.Module``s that score (user, item) pairs with logits, nothing else.

Contract (tested for every model): ``forward(users, items)`` broadcasts ``(B,)`` with ``(B,)`` or
``(B, 1)`` with ``(B, K)`` and returns logits of the broadcast shape; ``score_all(users)`` returns
``(B, num_items)`` logits and agrees with ``forward``. Sigmoid is applied only at the edge.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from torchcf.errors import ConfigError

__all__ = ["GMF", "MF", "MODELS", "Recommender", "build_model"]


class Recommender(nn.Module):
    """Base class: holds the sizes and the generic ``score_all`` fallback."""

    name: ClassVar[str] = "base"

    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__()
        if num_users <= 0 or num_items <= 0:
            raise ConfigError(f"a model needs users and items, got {num_users} × {num_items}")
        self.num_users = num_users
        self.num_items = num_items

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments beyond the sizes, JSON-serialisable (for persistence)."""
        return {}

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_all(self, users: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Logits of every item for each user: ``(B,) -> (B, num_items)``."""
        items = torch.arange(self.num_items, device=users.device)
        out = [
            self(users[s : s + chunk, None], items[None, :]) for s in range(0, len(users), chunk)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.num_items, device=users.device)


def _init_embedding(weight: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    nn.init.normal_(weight, 0.0, std, generator=generator)


class MF(Recommender):
    """Matrix factorisation: ``score(u, i) = Σ_f p_uf q_if`` (the seed's MF, a fixed all-ones head).

    Embeddings of size ``embedding_dim`` drawn from N(0, ``init_std``).
    """

    name = "mf"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        if embedding_dim <= 0:
            raise ConfigError(f"embedding_dim must be positive, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.init_std = init_std
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        _init_embedding(self.user_embedding.weight, init_std, generator)
        _init_embedding(self.item_embedding.weight, init_std, generator)

    def hparams(self) -> dict[str, Any]:
        return {"embedding_dim": self.embedding_dim, "init_std": self.init_std}

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user_embedding(users) * self.item_embedding(items)).sum(-1)

    def score_all(self, users: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T


class GMF(MF):
    """Generalized MF (He et al. 2017): ``score(u, i) = hᵀ(p_u ⊙ q_i) + b``.

    ``h`` initialised kaiming-uniform (a=1, sigmoid gain), ``b`` = 0, embeddings N(0, ``init_std``).
    """

    name = "gmf"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(num_users, num_items, embedding_dim, init_std, generator)
        self.head = nn.Linear(embedding_dim, 1)
        nn.init.kaiming_uniform_(self.head.weight, a=1, nonlinearity="sigmoid", generator=generator)
        nn.init.zeros_(self.head.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        product = self.user_embedding(users) * self.item_embedding(items)
        return product @ self.head.weight[0] + self.head.bias[0]

    def score_all(self, users: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        weighted = self.user_embedding(users) * self.head.weight[0]
        return torch.addmm(self.head.bias, weighted, self.item_embedding.weight.T)


MODELS: dict[str, type[Recommender]] = {"mf": MF, "gmf": GMF}


def build_model(
    name: str,
    num_users: int,
    num_items: int,
    seed: int | None = None,
    **hparams: Any,
) -> Recommender:
    """Instantiate a registered model; ``seed`` makes its initialisation reproducible."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return MODELS[name](num_users, num_items, generator=generator, **hparams)
