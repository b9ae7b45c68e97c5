"""LightGCN (He et al., SIGIR 2020) and LightGCN++ (Lee et al., RecSys 2024) as one model.

Embeddings ``E⁰`` of users and items (one table of ``U + I`` rows) are propagated over the
training graph ``A = [[0, R], [Rᵀ, 0]]`` normalised as ``Â = D^-α A D^-β``:
``Eᵏ⁺¹ = Â f(Eᵏ)``, with ``f`` the identity (LightGCN) or each row scaled to unit norm
(LightGCN++). The final embedding pools the layers:
``E = γ E⁰ + (1 − γ) mean(E¹ … E^K)``; LightGCN's mean of all ``K + 1`` layers is ``γ = 1/(K + 1)``
(the default), and ``K = 0`` is BPR-MF. A score is the dot product of the final user and item
embeddings. Training (BPR with one negative per positive, the reference's L2 on the batch's
``E⁰`` rows: ``penalty``) propagates the whole graph every step, as the mathematics requires;
scoring propagates once per set of weights and keeps the result.

XSimGCL (Yu et al., TKDE 2023) is a training setting of the same model: in training each layer's
output gets uniform noise ``sign(Eᵏ) ⊙ ε·u/‖u‖`` (``noise``), and ``contrast`` weighs an InfoNCE
loss (temperature ``temperature``) between the batch's final user and positive-item embeddings
and the same rows of layer ``contrast_layer`` (each row's positive is itself, the batch's other
rows its negatives); scoring stays noise-free. XSimGCL's own pooling is ``γ = 0``.

The graph products run through a compiled CSR kernel (``native``) with both cores where it
builds, ``torch.sparse`` otherwise; their gradient is the product with ``Âᵀ`` (``Â`` itself
when ``α = β``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from torchcf import native
from torchcf.errors import ConfigError
from torchcf.models.base import (
    Choice,
    FloatRange,
    KeptRows,
    ModelConfig,
    ModelSpec,
    ScoringModel,
    factors_setting,
    init_std_setting,
)
from torchcf.models.layers import StepKey
from torchcf.settings import above, between, setting, unit_interval

__all__ = [
    "SPEC",
    "Graph",
    "LightGCN",
    "LightGCNConfig",
    "info_nce",
    "layer_outputs",
    "normalised_graph",
    "pool",
    "propagate",
]


@dataclass(frozen=True)
class LightGCNConfig(ModelConfig):
    owner: ClassVar[str] = "lightgcn"
    embedding_dim: int = factors_setting(64)
    layers: int = setting(3, "lightgcn: propagation layers K (0: BPR-MF)", check=between(0, 16))
    init_std: float = init_std_setting(0.1)
    norm_alpha: float = setting(
        0.5, "lightgcn: α of the normalisation D^-α A D^-β (LightGCN: 0.5)", check=between(-4, 4)
    )
    norm_beta: float = setting(
        0.5, "lightgcn: β of the normalisation D^-α A D^-β (LightGCN: 0.5)", check=between(-4, 4)
    )
    gamma: float | None = setting(
        None,
        "lightgcn: the weight γ of E⁰ in γE⁰ + (1 − γ)·mean(E¹…E^K) (default 1/(K + 1): "
        "LightGCN's mean of all layers; LightGCN++: 0.2)",
        check=unit_interval,
    )
    unit_norm: bool = setting(
        False, "lightgcn: scale each layer's input embeddings to unit norm (LightGCN++)"
    )
    decay: float = setting(
        1e-4,
        "lightgcn: L2 weight on the batch's E⁰ rows, ½·decay·Σ‖e⁰‖²/B (the reference's decay)",
        check=between(0, 1e3),
    )
    noise: float = setting(
        0.0,
        "lightgcn: XSimGCL's ε: in training each layer's output gets sign(E)·ε·u/‖u‖, "
        "u uniform in [0, 1) (0: none)",
        check=between(0, 100),
    )
    contrast: float = setting(
        0.0,
        "lightgcn: XSimGCL's λ: weight of the InfoNCE loss between the batch's final embeddings "
        "and those of layer --contrast-layer (0: none)",
        check=between(0, 1e3),
    )
    contrast_layer: int = setting(
        1,
        "lightgcn: the layer whose embeddings the final ones are contrasted with",
        check=between(1, 16),
    )
    temperature: float = setting(
        0.2, "lightgcn: the temperature τ of the contrastive loss", check=above(0, 1e3)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contrast > 0 and self.contrast_layer > self.layers:
            raise ConfigError(
                f"{self.owner}: contrast_layer {self.contrast_layer} is above the "
                f"{self.layers} propagation layers"
            )


@dataclass(frozen=True, eq=False)
class Graph:
    """``Â`` and ``Âᵀ`` in CSR form (int64 ``indptr``/``indices``, float32 ``values``)."""

    forward: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    backward: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    nodes: int


def _csr(matrix: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    matrix = matrix.tocsr()
    matrix.sort_indices()
    return (
        torch.from_numpy(matrix.indptr.astype(np.int64)),
        torch.from_numpy(matrix.indices.astype(np.int64)),
        torch.from_numpy(matrix.data.astype(np.float32)),
    )


def normalised_graph(train: sp.csr_matrix, alpha: float = 0.5, beta: float = 0.5) -> Graph:
    """``Â = D^-α A D^-β`` of the bipartite graph of ``train`` (users × items, binary), users
    first; a node without edges has no row (its ``D^-x`` is taken as 0)."""
    users, items = train.shape
    binary = train.astype(np.float64)
    binary.data[:] = 1.0
    adjacency = sp.bmat([[None, binary], [binary.T, None]], format="csr")
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        left = np.where(degree > 0, degree**-alpha, 0.0)
        right = np.where(degree > 0, degree**-beta, 0.0)
    forward = sp.diags(left) @ adjacency @ sp.diags(right)
    backward = forward if alpha == beta else forward.T
    return Graph(_csr(forward), _csr(backward), users + items)


def _spmm(csr: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``A x`` for a CSR ``A``: the compiled kernel where it builds, else ``torch.sparse``."""
    kernel = native.load()
    x = x.contiguous()
    if kernel is not None and x.device.type == "cpu" and hasattr(kernel, "csr_spmm"):
        return kernel.csr_spmm(*csr, x)
    indptr, indices, values = (t.to(x.device) for t in csr)
    with warnings.catch_warnings():  # "sparse CSR support is in beta", "invariant checks off"
        warnings.simplefilter("ignore", UserWarning)
        shape = (len(indptr) - 1, x.shape[0])
        matrix = torch.sparse_csr_tensor(indptr, indices, values, shape)
        return torch.sparse.mm(matrix, x)


class _GraphProduct(torch.autograd.Function):
    """``Â x`` with its gradient ``Âᵀ g``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        ctx.graph = graph
        return _spmm(graph.forward, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _spmm(ctx.graph.backward, grad), None


def layer_outputs(
    graph: Graph,
    e0: torch.Tensor,
    layers: int,
    unit_norm: bool,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """``E¹ … E^K``, ``Eᵏ⁺¹ = Â f(Eᵏ) + Δ`` (``f``: the identity, or rows scaled to unit norm
    with ``unit_norm``; ``Δ = sign · noise · u/‖u‖``, ``u`` uniform, drawn from ``generator``)."""
    outputs, layer = [], e0
    for _ in range(layers):
        if unit_norm:
            layer = layer / (layer.norm(dim=1, keepdim=True) + 1e-12)
        layer = _GraphProduct.apply(layer, graph)
        if noise > 0:
            u = torch.rand(layer.shape, generator=generator, dtype=layer.dtype, device=layer.device)
            # (sign's gradient is 0: the noise is a constant of the step for autograd)
            layer = layer + torch.sign(layer.detach()) * F.normalize(u, dim=1) * noise
        outputs.append(layer)
    return outputs


def pool(e0: torch.Tensor, outputs: list[torch.Tensor], gamma: float | None) -> torch.Tensor:
    """``γ E⁰ + (1 − γ) mean(E¹ … E^K)`` (``γ`` by default ``1/(K + 1)``; ``E⁰`` without layers)."""
    if not outputs:
        return e0
    weight = 1.0 / (len(outputs) + 1) if gamma is None else gamma
    return weight * e0 + (1.0 - weight) * (sum(outputs[1:], outputs[0]) / len(outputs))


def propagate(
    graph: Graph, e0: torch.Tensor, layers: int, gamma: float | None, unit_norm: bool
) -> torch.Tensor:
    """The final embeddings ``γ E⁰ + (1 − γ) mean(E¹ … E^K)`` of ``layer_outputs`` without
    noise; ``(U + I, d)``."""
    return pool(e0, layer_outputs(graph, e0, layers, unit_norm), gamma)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of rows of ``a`` against rows of ``b`` (cosine / τ): each row's positive is
    its own row of ``b``, the other rows its negatives."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


class LightGCN(KeptRows, ScoringModel):
    """LightGCN / LightGCN++: ``score(u, i) = e_u · e_i`` of the propagated embeddings."""

    name = "lightgcn"
    Config = LightGCNConfig
    matrix_scoring = True
    user_tables = ()  # a new user has no edges to propagate: no fold-in
    # every step propagates the whole graph: several processes would repeat it, not share it
    distributed_training = False
    one_process = "it propagates its whole graph every step"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: ModelConfig | None = None,
        *,
        nnz: int = 0,
        generator: torch.Generator | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = self.make_config(config, settings)
        dim = self.config.embedding_dim
        self.pair_width = 3 * dim
        self.user_embedding = nn.Embedding(num_users, dim)
        self.item_embedding = nn.Embedding(num_items, dim)
        with torch.no_grad():
            for table in (self.user_embedding, self.item_embedding):
                table.weight.normal_(0.0, self.config.init_std, generator=generator)
        self.keep_rows(num_users, nnz)  # the training graph, saved: Â is rebuilt from it
        self._graph: tuple[tuple[int, ...], Graph] | None = None
        self._scores: tuple[tuple[int, ...], torch.Tensor] | None = None
        self.noise_key = StepKey()  # the training step keys the noise draws
        # the training forward's final and contrast-layer tables, for ``penalty`` (XSimGCL)
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None

    def graph(self) -> Graph:
        """``Â`` of the kept training graph: built once, again only when the graph changes."""
        key = (self.rows_indices.data_ptr(), int(self.rows_indices.numel()))
        if self._graph is None or self._graph[0] != key:
            indptr = self.rows_indptr.cpu().numpy()
            indices = self.rows_indices.cpu().numpy()
            train = sp.csr_matrix(
                (np.ones(len(indices)), indices, indptr), shape=(self.num_users, self.num_items)
            )
            built = normalised_graph(train, self.config.norm_alpha, self.config.norm_beta)
            self._graph = (key, built)
        return self._graph[1]

    def final(self) -> torch.Tensor:
        """The propagated embeddings ``(U + I, d)`` (with gradients when training)."""
        c = self.config
        return propagate(self.graph(), self._e0(), c.layers, c.gamma, c.unit_norm)

    def _e0(self) -> torch.Tensor:
        return torch.cat([self.user_embedding.weight, self.item_embedding.weight])

    def _training_final(self) -> torch.Tensor:
        """``final()`` of a training step: with XSimGCL's noise in every layer, and the
        contrast layer kept for ``penalty``."""
        c = self.config
        if not self.training or (c.noise == 0 and c.contrast == 0):
            return self.final()
        e0 = self._e0()
        gen = self.noise_key.generator(e0.device)
        outputs = layer_outputs(self.graph(), e0, c.layers, c.unit_norm, c.noise, gen)
        table = pool(e0, outputs, c.gamma)
        if c.contrast > 0:
            self._views = (table, outputs[c.contrast_layer - 1])
        return table

    def train(self, mode: bool = True) -> LightGCN:
        """Also forgets the propagation kept for scoring: training moves the weights (an
        optimizer writing through ``.data`` leaves their version counters as they were)."""
        self._scores = None
        return super().train(mode)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._scores = None  # new weights: propagate again
        super()._load_from_state_dict(*args, **kwargs)

    def _scoring(self) -> torch.Tensor:
        """``final()`` computed once per set of weights for scoring (no gradients)."""
        weights = (self.user_embedding.weight, self.item_embedding.weight)
        key = tuple(w._version for w in weights) + tuple(w.data_ptr() for w in weights)
        key += (self.rows_indices.data_ptr(),)
        if self._scores is None or self._scores[0] != key:
            with torch.no_grad():
                self._scores = (key, self.final())
        return self._scores[1]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        table = self._training_final() if torch.is_grad_enabled() else self._scoring()
        return (table[users] * table[self.num_users + items]).sum(-1)

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        table = self._scoring()
        return table[users] @ table[self.num_users :].T

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``½·decay·(Σ‖e⁰_u‖² + Σ‖e⁰_i‖²) / B`` over the batch's rows (repeats counted), and
        with ``contrast`` XSimGCL's ``λ·(InfoNCE(users) + InfoNCE(positive items))`` over the
        batch's distinct users and positive items (the first of each pair; every item of a
        pointwise batch)."""
        rows = max(1, users.shape[0])
        squares = self.user_embedding(users).pow(2).sum() + self.item_embedding(items).pow(2).sum()
        loss = 0.5 * self.config.decay * squares / rows
        if self._views is None:
            return loss
        (table, view), self._views = self._views, None
        positives = items[..., 0] if items.dim() > 1 else items
        c = self.config
        for ids in (torch.unique(users), self.num_users + torch.unique(positives)):
            loss = loss + c.contrast * info_nce(table[ids], view[ids], c.temperature)
        return loss

    def item_vectors(self) -> torch.Tensor:
        return self._scoring()[self.num_users :]

    def dot_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The propagated embeddings of users and items."""
        table = self._scoring()
        return table[: self.num_users], table[self.num_users :]


SPEC = ModelSpec(
    LightGCN,
    "LightGCN / LightGCN++: embeddings propagated over the normalised user-item graph",
    defaults={
        "loss": "bpr",
        "num_negatives": 1,
        "batch_size": 2048,
        "learning_rate": 0.001,
        "epochs": 100,
        "sample_by": "user",  # (the reference code's sampling)
    },
    # chosen on Gowalla's validation file (benchmarks/RESULTS.md, issue 26): 8× the paper's
    # batch (an epoch in 4 s there), 20× its rate decaying to 0 over 350 epochs, evaluated
    # every 25 (a full-ranking pass costs more than an epoch)
    recipes={
        "fast": {
            "batch_size": 16384,
            "learning_rate": 0.02,
            "lr_schedule": "cosine",
            "epochs": 350,
            "eval_every": 25,
        }
    },
    search={
        "learning_rate": FloatRange(3e-4, 1e-2, log=True),
        "layers": Choice((1, 2, 3, 4)),
        "decay": FloatRange(1e-6, 1e-2, log=True),
    },
)
