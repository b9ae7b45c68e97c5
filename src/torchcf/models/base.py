"""What every model is: a ``ScoringModel`` that scores, its typed ``ModelConfig``, and the
``ModelSpec`` that registers it (settings, recipes, search space) in one place.

Contract (tested for every model): ``forward(users, items)`` broadcasts ``(B,)`` with ``(B,)`` or
``(B, 1)`` with ``(B, K)`` and returns logits of the broadcast shape; ``score_all(users)`` returns
``(B, num_items)`` logits and agrees with ``forward``. Sigmoid is applied only at the edge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchcf.errors import ConfigError
from torchcf.settings import Settings, above, between, setting

if TYPE_CHECKING:
    from torchcf.data.interactions import Interactions
    from torchcf.models.layers import KernelLayout

__all__ = [
    "Choice",
    "FittedModel",
    "FloatRange",
    "IntRange",
    "KeptRows",
    "ModelConfig",
    "ModelSpec",
    "Param",
    "ScoringModel",
    "factors_setting",
    "gather_scores",
    "init_std_setting",
    "row_columns",
]


@dataclass(frozen=True)
class ModelConfig(Settings):
    """A model's own hyperparameters (subclassed once per model; no fields here)."""

    owner: ClassVar[str] = "model"


def factors_setting(default: int) -> Any:
    """The ``embedding_dim`` setting (flag ``--factors``), shared by the embedding models."""
    return setting(
        default, "embedding size (predictive factors)", flag="--factors", check=between(1, 65_536)
    )


def init_std_setting(default: float) -> Any:
    """The ``init_std`` setting of models with N(0, std) embeddings."""
    return setting(default, "std of the N(0, std) embedding initialisation", check=above(0, 1e3))


class ScoringModel(nn.Module):
    """Base class: holds the sizes, the config and the generic ``score_all`` fallback.

    A subclass names its ``Config``; ``Model(num_users, num_items, config)`` or
    ``Model(num_users, num_items, factor=...)`` (the config's fields as keywords) build it, and an
    option that is not a field of the config is an error naming the model and the option.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    # floats materialised per scored (user, item) pair: sizes the chunks of generic scoring
    pair_width: int = 1
    # the embedding modules holding a row per user: what fold-in fits for a new user
    user_tables: tuple[str, ...] = ("user_embedding",)
    # score_all is one matrix product, cheaper than scoring (user, candidate) pairs one by one
    matrix_scoring: bool = False
    # score_all bounds its own working memory (blocks of pairs): callers size their batches of
    # users by the (users × items) result alone
    blocked_scoring: bool = False
    # several processes (torchrun) can train it: its step's work splits by rows of the batch;
    # else ``one_process`` says why not
    distributed_training: ClassVar[bool] = True
    one_process: ClassVar[str] = ""
    # it trains on whole user rows (an autoencoder): a batch is users, its loss ``row_loss``
    row_training: ClassVar[bool] = False
    # it scores a new user's items directly (``fold_in_scores``), without fitting a user row
    folds_in_rows: ClassVar[bool] = False

    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__()
        if num_users <= 0 or num_items <= 0:
            raise ConfigError(f"a model needs users and items, got {num_users} × {num_items}")
        self.num_users = num_users
        self.num_items = num_items

    @classmethod
    def make_config(cls, config: ModelConfig | None, settings: Mapping[str, Any]) -> Any:
        """``config`` (or the defaults) with ``settings`` on top, as this model's ``Config``."""
        base = config.to_dict() if config is not None else {}
        if config is not None and not isinstance(config, cls.Config):
            raise ConfigError(f"{cls.name} takes a {cls.Config.__name__}, got {type(config)}")
        unknown = sorted(set(settings) - set(cls.Config.field_names()))
        if unknown:
            raise ConfigError(
                f"{cls.name} does not take {', '.join(unknown)} "
                f"(its settings: {', '.join(cls.Config.field_names()) or 'none'})"
            )
        return cls.Config.from_dict({**base, **settings})

    def settings(self) -> dict[str, Any]:
        """The model's settings (its config), without state sizes: what defines the model."""
        config = getattr(self, "config", None)
        return config.to_dict() if config is not None else {}

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments beyond the sizes, JSON-serialisable (for persistence)."""
        return self.settings()

    @classmethod
    def from_hparams(
        cls,
        num_users: int,
        num_items: int,
        hparams: Mapping[str, Any],
        restore: Callable[[str, int, int, Mapping[str, Any]], ScoringModel],
    ) -> ScoringModel:
        """Rebuild a saved model from ``hparams()`` (``restore`` builds nested models by name)."""
        return cls(num_users, num_items, **hparams)

    def kernel_layout(self) -> KernelLayout | None:
        """The parameters a compiled training step updates, in the order it reads them, or
        None when no compiled step trains this model (``torchcf.training.steps``)."""
        return None

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

    def dot_vectors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(users × d, items × d)`` whose inner products are ``score_all``'s scores (biases
        folded in as extra columns), or None when the scores are not inner products."""
        return None

    def observe(self, train: Interactions) -> None:
        """Keep what the scores depend on besides parameters (a graph model's training graph);
        the trainer calls it once before training. Most models need nothing."""

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """A regularisation term the model's definition adds to a batch's loss (LightGCN's L2
        on the batch's E⁰ rows), or None."""
        return None

    def row_loss(self, users: torch.Tensor, step: int) -> torch.Tensor:
        """``(B,)`` losses of the users' whole training rows at optimizer step ``step``
        (0-based): what a ``row_training`` model trains on."""
        raise NotImplementedError

    def fold_in_scores(self, items: torch.Tensor) -> torch.Tensor:
        """``(num_items,)`` scores for a user not in training who interacted with ``items``
        (``folds_in_rows`` models)."""
        raise NotImplementedError


class FittedModel(ScoringModel):
    """A model the trainer fits with ``fit_epoch`` rather than with gradient steps.

    Closed-form models fit at epoch 1 (``max_epochs = 1``); iterative ones (iALS) refine every
    epoch, so their epochs are evaluated and selected like any other model's.
    """

    max_epochs: ClassVar[int | None] = 1  # closed form: more epochs would change nothing
    # fit_epoch shares its work among the ranks of a distributed run (torchcf.distributed)
    distributed: ClassVar[bool] = False
    folds_in_rows = True

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        """Fit (or refine, for iterative models) on ``train``; returns the objective or NaN."""
        raise NotImplementedError


def row_columns(
    indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The items of ``users``' rows of a CSR matrix (``indptr``, ``indices``), concatenated in
    the users' order, and each user's count."""
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    offsets = torch.arange(int(counts.sum()), device=users.device)
    offsets = offsets - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    return indices[torch.repeat_interleave(starts, counts) + offsets], counts


class KeptRows(nn.Module):
    """A model whose scores read the users' training items keeps them (deduplicated, as CSR
    buffers ``rows_indptr``/``rows_indices``, saved with the weights); ``observe`` fills them.
    ``nnz`` sizes the buffers when a saved model is loaded."""

    rows_indptr: torch.Tensor
    rows_indices: torch.Tensor

    def keep_rows(self, num_users: int, nnz: int) -> None:
        self.register_buffer("rows_indptr", torch.zeros(num_users + 1, dtype=torch.long))
        self.register_buffer("rows_indices", torch.zeros(nnz, dtype=torch.long))

    def observe(self, train: Interactions) -> None:
        """Keep the training rows (deduplicated user → item pairs)."""
        csr = train.deduplicate().csr
        csr.sort_indices()
        device = self.rows_indptr.device
        self.rows_indptr = torch.as_tensor(csr.indptr, dtype=torch.long).to(device)
        self.rows_indices = torch.as_tensor(csr.indices, dtype=torch.long).to(device)

    def hparams(self) -> dict[str, Any]:
        """The model's settings and ``nnz``, which sizes the kept rows when it is loaded."""
        return {"nnz": int(self.rows_indices.numel()), **super().hparams()}  # type: ignore[misc]

    def row_items(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The users' training items, concatenated, and each user's count."""
        return row_columns(self.rows_indptr, self.rows_indices, users)


def gather_scores(model: ScoringModel, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``forward`` for models that score whole rows: ``score_all`` of each distinct user, then
    the broadcast (user, item) pairs picked out of those rows."""
    users, items = torch.broadcast_tensors(users, items)
    unique, inverse = torch.unique(users, return_inverse=True)
    return model.score_all(unique)[inverse, items]


@dataclass(frozen=True)
class FloatRange:
    """A tuning range of floats (log-uniform with ``log``)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


Param = FloatRange | IntRange | Choice

# the training settings a fitted model (closed form, alternating solves) takes: the others
# (optimizer, batches, negatives...) mean nothing to it and are refused
FITTED_TRAINING = frozenset(
    {"epochs", "seed", "device", "patience", "eval_every", "select_by", "select_metric"}
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything about one registered model, declared in the model's own module.

    ``defaults``: training settings this model trains with where the seed's do not suit it
    (``epochs``, ``loss``...); ``recipes``: named sets of settings applied on request (``fast``:
    the ``--fast`` mode; ``finetune``: NeuMF after pretraining); ``search``: the tuning space,
    by setting name; ``training``: the training settings the model takes (None: all).
    """

    model: type[ScoringModel]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    search: Mapping[str, Param] = field(default_factory=dict)
    training: frozenset[str] | None = None
    trainable: bool = True

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def config(self) -> type[ModelConfig]:
        return self.model.Config
