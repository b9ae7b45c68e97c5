"""Models: small ``nn.Module``s that score (user, item) pairs with logits, nothing else.

Contract (tested for every model): ``forward(users, items)`` broadcasts ``(B,)`` with ``(B,)`` or
``(B, 1)`` with ``(B, K)`` and returns logits of the broadcast shape; ``score_all(users)`` returns
``(B, num_items)`` logits and agrees with ``forward``. Sigmoid is applied only at the edge.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from torchcf.errors import ConfigError

__all__ = [
    "BPRMF",
    "GMF",
    "MF",
    "MLP",
    "NEURAL_MODELS",
    "Blend",
    "NeuMF",
    "ScoringModel",
    "gather_scores",
    "standardise",
    "weighted_sum",
]


class ScoringModel(nn.Module):
    """Base class: holds the sizes and the generic ``score_all`` fallback."""

    name: ClassVar[str] = "base"
    # floats materialised per scored (user, item) pair: sizes the chunks of generic scoring
    pair_width: int = 1
    # the embedding modules holding a row per user: what fold-in fits for a new user
    user_tables: tuple[str, ...] = ("user_embedding",)
    # score_all is one matrix product, cheaper than scoring (user, candidate) pairs one by one
    matrix_scoring: bool = False

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

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Logits of every item for each user: ``(B,) -> (B, num_items)``.

        Generic fallback: ``forward`` on user chunks sized so that about 2^24 floats are alive.
        """
        if chunk is None:
            chunk = max(1, 2**24 // (self.num_items * self.pair_width))
        items = torch.arange(self.num_items, device=users.device)
        out = [
            self(users[s : s + chunk, None], items[None, :]) for s in range(0, len(users), chunk)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.num_items, device=users.device)

    def item_vectors(self) -> torch.Tensor | None:
        """``(num_items, d)`` item representations for item-item similarity, or ``None`` when
        the model has no single item embedding."""
        return None


def gather_scores(model: ScoringModel, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``forward`` for models that score whole rows: ``score_all`` of each distinct user, then
    the broadcast (user, item) pairs picked out of those rows."""
    users, items = torch.broadcast_tensors(users, items)
    unique, inverse = torch.unique(users, return_inverse=True)
    return model.score_all(unique)[inverse, items]


def _head(width: int, generator: torch.Generator | None) -> nn.Linear:
    """The NCF output layer ``hᵀx + b``: ``h`` kaiming-uniform (a=1, sigmoid gain), ``b`` = 0."""
    head = nn.Linear(width, 1)
    nn.init.kaiming_uniform_(head.weight, a=1, nonlinearity="sigmoid", generator=generator)
    nn.init.zeros_(head.bias)
    return head


def _init_embedding(weight: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    nn.init.normal_(weight, 0.0, std, generator=generator)


class MF(ScoringModel):
    """Matrix factorisation: ``score(u, i) = Σ_f p_uf q_if`` (the seed's MF, a fixed all-ones head).

    Embeddings of size ``embedding_dim`` drawn from N(0, ``init_std``). With ``biases``:
    ``+ b_u + b_i + g`` (zero-initialised user, item and global biases; Rendle et al. 2020).
    """

    name = "mf"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
        biases: bool = False,
    ) -> None:
        super().__init__(num_users, num_items)
        if embedding_dim <= 0:
            raise ConfigError(f"embedding_dim must be positive, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.init_std = init_std
        self.pair_width = 3 * embedding_dim  # p_u, q_i and their product per scored pair
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        _init_embedding(self.user_embedding.weight, init_std, generator)
        _init_embedding(self.item_embedding.weight, init_std, generator)
        self.biases = biases
        if biases:
            self.user_bias = nn.Embedding(num_users, 1)
            self.item_bias = nn.Embedding(num_items, 1)
            self.global_bias = nn.Parameter(torch.zeros(()))
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
            self.user_tables = ("user_embedding", "user_bias")

    def hparams(self) -> dict[str, Any]:
        out: dict[str, Any] = {"embedding_dim": self.embedding_dim, "init_std": self.init_std}
        return {**out, "biases": True} if self.biases else out

    matrix_scoring = True

    def _bias(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.user_bias(users)[..., 0] + self.item_bias(items)[..., 0] + self.global_bias

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_embedding(users) * self.item_embedding(items)).sum(-1)
        return dot + self._bias(users, items) if self.biases else dot

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        dot = self.user_embedding(users) @ self.item_embedding.weight.T
        if not self.biases:
            return dot
        return dot + self.user_bias(users) + self.item_bias.weight.T + self.global_bias

    def item_vectors(self) -> torch.Tensor | None:
        return self.item_embedding.weight


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
        self.head = _head(embedding_dim, generator)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        product = self.user_embedding(users) * self.item_embedding(items)
        return product @ self.head.weight[0] + self.head.bias[0]

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        weighted = self.user_embedding(users) * self.head.weight[0]
        return torch.addmm(self.head.bias, weighted, self.item_embedding.weight.T)

    def item_vectors(self) -> torch.Tensor | None:
        """``h ⊙ q_i``: scores are dot products of user rows with these."""
        return self.item_embedding.weight * self.head.weight[0]


class _MaskedScale(torch.autograd.Function):
    """``x * keep`` with ``keep`` (0 or 1/(1-p)) saved for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(keep)
        return x * keep

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep, None


class Dropout(nn.Module):
    """Inverted dropout whose CPU masks come from NumPy's PCG64 random bytes.

    ``nn.Dropout`` on CPU draws from torch's Mersenne Twister one float at a time and costs more
    than the tower's matmuls (~1 ms per 1,024 × 128 activations here, against ~0.15 ms for a byte
    mask). The drop probability is rounded to a multiple of 1/256 (0.2 → 51/256 = 0.1992) and the
    kept units are scaled by the exact 1/(1 - p) of that rounding, so expectations are unchanged.
    Each call seeds its bytes from torch's global generator: runs stay repeatable under
    ``torch.manual_seed``. On other devices it is ``nn.functional.dropout``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = max(1, round(p * 256))  # bytes below it are dropped
        self.scale = 256.0 / (256 - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        seed = int(torch.randint(0, 2**62, (1,)))
        raw = np.random.default_rng(seed).bytes(x.numel())
        mask = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(x.shape)
        keep = (mask >= self.threshold).to(x.dtype).mul_(self.scale)
        return _MaskedScale.apply(x, keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _tower(
    input_width: int, factors: int, layers: int, dropout: float, generator: torch.Generator | None
) -> nn.Sequential:
    """ReLU layers halving the width down to ``factors``: widths factors·2^(layers-1) … factors."""
    modules: list[nn.Module] = []
    width = input_width
    for level in range(layers):
        out = factors * 2 ** (layers - 1 - level)
        linear = nn.Linear(width, out)
        nn.init.xavier_uniform_(linear.weight, generator=generator)
        nn.init.zeros_(linear.bias)
        modules += [linear, nn.ReLU()]
        if dropout > 0:
            modules.append(Dropout(dropout))
        width = out
    return nn.Sequential(*modules)


def _tower_output(
    tower: nn.Sequential,
    user_table: nn.Embedding,
    item_table: nn.Embedding,
    users: torch.Tensor,
    items: torch.Tensor,
) -> torch.Tensor:
    """``tower([p_u; q_i])`` for broadcast ``users`` and ``items``.

    The first layer is split, ``W [p; q] = W_u p + W_i q``, and each half is computed once per
    user and once per item of the (unbroadcast) inputs instead of once per pair: ranking 100
    candidates or every item then costs only the later layers per pair (a quarter of the default
    tower's multiply-adds); a training batch of pairs costs what the concatenation costs.
    """
    first = tower[0]
    assert isinstance(first, nn.Linear)
    width = user_table.embedding_dim
    user_part = user_table(users) @ first.weight[:, :width].T
    item_weight = first.weight[:, width:].T
    # scoring (no gradient) many items: every item's half once, then picked; training keeps the
    # lookup (embeddings may produce sparse row gradients)
    if not torch.is_grad_enabled() and items.numel() >= item_table.num_embeddings:
        item_part = (item_table.weight @ item_weight)[items]
    else:
        item_part = item_table(items) @ item_weight
    return tower[1:](user_part + item_part + first.bias)


def _check_tower(embedding_dim: int, layers: int, dropout: float) -> None:
    if embedding_dim <= 0:
        raise ConfigError(f"embedding_dim must be positive, got {embedding_dim}")
    if layers < 1:
        raise ConfigError(f"layers must be at least 1, got {layers}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


class _TowerModel(ScoringModel):
    """Shared shape of the models with an MLP tower: factors, layers, dropout, init."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int,
        layers: int,
        dropout: float,
        init_std: float,
    ) -> None:
        super().__init__(num_users, num_items)
        _check_tower(embedding_dim, layers, dropout)
        self.embedding_dim = embedding_dim
        self.layers = layers
        self.dropout = dropout
        self.init_std = init_std

    def hparams(self) -> dict[str, Any]:
        return {
            "embedding_dim": self.embedding_dim,
            "layers": self.layers,
            "dropout": self.dropout,
            "init_std": self.init_std,
        }


class MLP(_TowerModel):
    """NCF's MLP: ``score = hᵀ tower([p_u; q_i]) + b``.

    Embeddings of size ``embedding_dim · 2^(layers-1)`` each; ``layers`` ReLU layers halve the width
    down to ``embedding_dim`` (the predictive factors); xavier-uniform layers, a linear head
    initialised like GMF's; optional dropout after each layer.
    """

    name = "mlp"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        layers: int = 3,
        dropout: float = 0.0,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(num_users, num_items, embedding_dim, layers, dropout, init_std)
        width = embedding_dim * 2 ** (layers - 1)
        self.pair_width = 4 * width
        self.user_embedding = nn.Embedding(num_users, width)
        self.item_embedding = nn.Embedding(num_items, width)
        _init_embedding(self.user_embedding.weight, init_std, generator)
        _init_embedding(self.item_embedding.weight, init_std, generator)
        self.tower = _tower(2 * width, embedding_dim, layers, dropout, generator)
        self.head = _head(embedding_dim, generator)

    def features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The tower's output ``(..., embedding_dim)`` for broadcast ``users`` and ``items``."""
        return _tower_output(self.tower, self.user_embedding, self.item_embedding, users, items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.features(users, items) @ self.head.weight[0] + self.head.bias[0]

    def item_vectors(self) -> torch.Tensor | None:
        return self.item_embedding.weight


class NeuMF(_TowerModel):
    """NeuMF: a GMF branch and an MLP branch with their own embeddings, one linear head.

    ``score = hᵀ [p^G_u ⊙ q^G_i ; tower([p^M_u; q^M_i])] + b``. ``init_from_pretrained`` sets it
    up from a trained GMF and MLP so that it scores ``α·GMF + (1−α)·MLP`` before fine-tuning.
    """

    name = "neumf"
    user_tables = ("gmf_user_embedding", "mlp_user_embedding")

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        layers: int = 3,
        dropout: float = 0.0,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(num_users, num_items, embedding_dim, layers, dropout, init_std)
        width = embedding_dim * 2 ** (layers - 1)
        self.pair_width = 4 * width + embedding_dim
        self.gmf_user_embedding = nn.Embedding(num_users, embedding_dim)
        self.gmf_item_embedding = nn.Embedding(num_items, embedding_dim)
        self.mlp_user_embedding = nn.Embedding(num_users, width)
        self.mlp_item_embedding = nn.Embedding(num_items, width)
        for emb in (
            self.gmf_user_embedding,
            self.gmf_item_embedding,
            self.mlp_user_embedding,
            self.mlp_item_embedding,
        ):
            _init_embedding(emb.weight, init_std, generator)
        self.tower = _tower(2 * width, embedding_dim, layers, dropout, generator)
        self.head = _head(2 * embedding_dim, generator)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        mlp = _tower_output(
            self.tower, self.mlp_user_embedding, self.mlp_item_embedding, users, items
        )
        gmf = self.gmf_user_embedding(users) * self.gmf_item_embedding(items)
        both = torch.cat([gmf, mlp], dim=-1)
        return both @ self.head.weight[0] + self.head.bias[0]

    @torch.no_grad()
    def init_from_pretrained(self, gmf: GMF, mlp: MLP, alpha: float = 0.5) -> NeuMF:
        """Copy both branches' weights; head = [α·h_GMF, (1−α)·h_MLP], bias = α·b_G + (1−α)·b_M."""
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
        if not isinstance(gmf, GMF) or not isinstance(mlp, MLP):
            raise ConfigError("pretraining needs a trained gmf and a trained mlp")
        sizes = (self.num_users, self.num_items)
        for other in (gmf, mlp):
            if (other.num_users, other.num_items) != sizes:
                raise ConfigError(
                    f"pretrained {other.name} has {other.num_users} users × {other.num_items} "
                    f"items, NeuMF has {sizes[0]} × {sizes[1]}: not the same data"
                )
        if gmf.embedding_dim != self.embedding_dim or mlp.embedding_dim != self.embedding_dim:
            raise ConfigError(
                f"pretrained factors differ: gmf {gmf.embedding_dim}, mlp {mlp.embedding_dim}, "
                f"neumf {self.embedding_dim}"
            )
        if mlp.layers != self.layers:
            raise ConfigError(f"pretrained mlp has {mlp.layers} layers, neumf {self.layers}")
        self.gmf_user_embedding.weight.copy_(gmf.user_embedding.weight)
        self.gmf_item_embedding.weight.copy_(gmf.item_embedding.weight)
        self.mlp_user_embedding.weight.copy_(mlp.user_embedding.weight)
        self.mlp_item_embedding.weight.copy_(mlp.item_embedding.weight)
        mine, theirs = (
            [m for m in tower if isinstance(m, nn.Linear)] for tower in (self.tower, mlp.tower)
        )
        for target, source in zip(mine, theirs, strict=True):  # dropout may differ: layers only
            target.load_state_dict(source.state_dict())
        self.head.weight.copy_(
            torch.cat([alpha * gmf.head.weight, (1 - alpha) * mlp.head.weight], dim=1)
        )
        self.head.bias.copy_(alpha * gmf.head.bias + (1 - alpha) * mlp.head.bias)
        return self


class BPRMF(MF):
    """BPR-MF: the MF scorer trained with the pairwise BPR loss (its recipe sets ``loss=bpr``)."""

    name = "bpr"


NEURAL_MODELS: dict[str, type[ScoringModel]] = {
    "mf": MF,
    "gmf": GMF,
    "mlp": MLP,
    "neumf": NeuMF,
    "bpr": BPRMF,
}


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Each row (a user's scores over every item) shifted and scaled to mean 0, std 1."""
    centred = scores - scores.mean(-1, keepdim=True)
    return centred / centred.std(-1, keepdim=True).clamp_min(1e-12)


def weighted_sum(
    weights: list[float] | tuple[float, ...], terms: list[torch.Tensor | None]
) -> torch.Tensor:
    """``Σ w_k · terms_k`` over the positive weights, in order (``None``: a term of weight 0)."""
    total: torch.Tensor | None = None
    for w, term in zip(weights, terms, strict=True):
        if w > 0 and term is not None:
            total = w * term if total is None else total + w * term
    if total is None:
        raise ConfigError("a weighted sum needs a positive weight")
    return total


class Blend(ScoringModel):
    """A weighted sum of trained models' scores, each standardised per user over all items:
    ``score(u, ·) = Σ_k w_k · (s_k(u, ·) − mean) / std``. The scales of different models'
    scores (logits, EASE's reconstructions, iALS dot products) are not comparable; their
    standardised rows are, so the weights alone say how much each model counts.

    ``parts`` are ``{"model": name, "hparams": {...}}`` of registered models, built here and
    loaded with their weights from the blend's state dict (``parts.K.*``); ``Blend.of`` wraps
    models already trained. ``torchcf blend`` chooses the weights on the validation holdout.
    """

    name = "blend"
    user_tables = ()
    matrix_scoring = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        parts: list[dict[str, Any]],
        weights: list[float],
    ) -> None:
        super().__init__(num_users, num_items)
        from torchcf.registry import MODELS  # parts are any registered model (import cycle)

        built = []
        for spec in parts:
            name = spec.get("model")
            if name not in MODELS or name == self.name:
                raise ConfigError(f"a blend part must be a trained model, got {name!r}")
            built.append(MODELS[name](num_users, num_items, **spec.get("hparams", {})))
        self._assemble(built, weights)

    def _assemble(self, models: list[ScoringModel], weights: list[float]) -> None:
        if len(models) < 2 or len(weights) != len(models):
            raise ConfigError(
                f"a blend needs two or more parts and one weight each, got {len(models)} "
                f"parts and {len(weights)} weights"
            )
        if any(not np.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
            raise ConfigError(f"blend weights must be ≥ 0 and not all 0, got {list(weights)}")
        self.parts = nn.ModuleList(models)
        self.weights = [float(w) for w in weights]

    @classmethod
    def of(cls, models: list[ScoringModel], weights: list[float]) -> Blend:
        """A blend of trained ``models`` (same users and items), sharing their weights."""
        if len({(m.num_users, m.num_items) for m in models}) > 1:
            raise ConfigError("blend parts must have the same users and items")
        blend = cls.__new__(cls)  # the parts exist already: nothing to build from specs
        ScoringModel.__init__(blend, models[0].num_users, models[0].num_items)
        blend._assemble(models, weights)
        return blend

    @property
    def members(self) -> list[ScoringModel]:
        """The parts, typed."""
        return [cast(ScoringModel, p) for p in self.parts]

    def hparams(self) -> dict[str, Any]:
        parts = [{"model": p.name, "hparams": p.hparams()} for p in self.members]
        return {"parts": parts, "weights": self.weights}

    def combine(self, part_scores: list[torch.Tensor | None]) -> torch.Tensor:
        """The weighted sum of the parts' standardised rows (``None``: a part of weight 0)."""
        terms = [None if s is None else standardise(s.float()) for s in part_scores]
        return weighted_sum(self.weights, terms)

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        if chunk is None:
            chunk = max(1, 2**24 // self.num_items)
        out = []
        for s in range(0, len(users), chunk):
            rows = users[s : s + chunk]
            scores = [
                p.score_all(rows) if w > 0 else None
                for w, p in zip(self.weights, self.members, strict=True)
            ]
            out.append(self.combine(scores))
        return torch.cat(out) if out else torch.zeros(0, self.num_items, device=users.device)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return gather_scores(self, users, items)
