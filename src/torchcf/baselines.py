"""Baselines fitted without gradient steps: popularity, item-kNN, EASE and iALS.

They share the scoring contract of every model (``forward`` broadcasts, ``score_all``), so the
trainer, evaluation, persistence, compare and serving take them as they are. The one difference:
instead of sampling negatives and stepping an optimizer, the trainer calls ``fit_epoch(train,
epoch)``. Closed-form models fit at epoch 1 (``max_epochs = 1``); iALS does one alternating sweep
(users, then items) per epoch, so its epochs are evaluated and selected like any other model's.

Item-item models (item-kNN, EASE) score a user from their training history, which they keep as
CSR buffers (``history_indptr``, ``history_indices``): saved with the weights, no pickles.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from torchcf.data.interactions import Interactions
from torchcf.errors import ConfigError
from torchcf.models import ScoringModel, gather_scores

__all__ = ["EASE", "IALS", "FittedModel", "ItemKNN", "Pop"]


class FittedModel(ScoringModel):
    """A model the trainer fits with ``fit_epoch`` rather than with gradient steps."""

    max_epochs: ClassVar[int | None] = 1  # closed form: more epochs would change nothing

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        """Fit (or refine, for iterative models) on ``train``; returns the objective or NaN."""
        raise NotImplementedError

    def fold_in_scores(self, items: torch.Tensor) -> torch.Tensor:
        """``(num_items,)`` scores for a user not in training who interacted with ``items``."""
        raise NotImplementedError


def _broadcast_gather(
    table: torch.Tensor, users: torch.Tensor, items: torch.Tensor
) -> torch.Tensor:
    """``table[users, items]`` for broadcast index tensors, computing only the rows needed."""
    users, items = torch.broadcast_tensors(users, items)
    return table[users, items]


class Pop(FittedModel):
    """Most popular: ``score(u, i) = number of training users of i`` (the same for every user)."""

    name = "pop"
    user_tables = ()
    counts: torch.Tensor

    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__(num_users, num_items)
        self.register_buffer("counts", torch.zeros(num_items))

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        counts = np.bincount(train.deduplicate().items, minlength=self.num_items)
        self.counts.copy_(torch.as_tensor(counts, dtype=torch.float32))
        return math.nan

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users, items = torch.broadcast_tensors(users, items)
        return self.counts[items]

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()

    def fold_in_scores(self, items: torch.Tensor) -> torch.Tensor:
        return self.counts.clone()


class _HistoryModel(FittedModel):
    """Scores ``X_u @ W`` from each user's training items ``X_u`` and an item-item ``W``."""

    user_tables = ()
    history_indptr: torch.Tensor
    history_indices: torch.Tensor
    weights: torch.Tensor

    def __init__(self, num_users: int, num_items: int, nnz: int = 0) -> None:
        super().__init__(num_users, num_items)
        self.pair_width = 64  # per scored pair, to size evaluation batches
        self.register_buffer("history_indptr", torch.zeros(num_users + 1, dtype=torch.long))
        self.register_buffer("history_indices", torch.zeros(nnz, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(num_items, num_items))

    def hparams(self) -> dict[str, Any]:
        return {"nnz": int(self.history_indices.numel())}

    def _fit_history(self, train: Interactions) -> torch.Tensor:
        """Keep the users' training items; return the item co-occurrence ``XᵀX`` (dense,
        float64), computed sparse so no users × items matrix is ever materialised."""
        csr = train.deduplicate().csr
        csr.sort_indices()
        self.history_indptr = torch.as_tensor(csr.indptr, dtype=torch.long)
        self.history_indices = torch.as_tensor(csr.indices, dtype=torch.long)
        binary = csr.astype(np.float64)
        binary.data[:] = 1.0
        return torch.as_tensor((binary.T @ binary).toarray())

    def history(self, users: torch.Tensor) -> torch.Tensor:
        """``(B, num_items)`` 0/1 rows of the users' training items."""
        starts, ends = self.history_indptr[users], self.history_indptr[users + 1]
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        offsets = torch.arange(int(counts.sum()), device=users.device)
        offsets = offsets - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        columns = self.history_indices[torch.repeat_interleave(starts, counts) + offsets]
        dense = torch.zeros(len(users), self.num_items, device=users.device)
        dense[rows, columns] = 1.0
        return dense

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        return self.history(users) @ self.weights

    def fold_in_scores(self, items: torch.Tensor) -> torch.Tensor:
        """Item-item models need no fitting: ``x @ W`` for the new user's row ``x``."""
        return self.weights[items].sum(0)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return gather_scores(self, users, items)


class EASE(_HistoryModel):
    """EASE (Steck 2019): ``B = argmin ||X − XB||² + λ||B||²`` with ``diag(B) = 0``, closed form
    ``P = (XᵀX + λI)⁻¹``, ``B = −P / diag(P)`` (column-wise), ``B_ii = 0``; score ``X_u B``."""

    name = "ease"

    def __init__(self, num_users: int, num_items: int, nnz: int = 0, l2: float = 500.0) -> None:
        super().__init__(num_users, num_items, nnz)
        if not l2 > 0:
            raise ConfigError(f"ease needs l2 > 0, got {l2}")
        self.l2 = l2

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "l2": self.l2}

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        gram = self._fit_history(train)
        gram.diagonal().add_(self.l2)
        inverse = torch.linalg.inv(gram)
        weights = -inverse / inverse.diagonal()[None, :]
        weights.diagonal().zero_()
        self.weights = weights.float()
        return math.nan


class ItemKNN(_HistoryModel):
    """Item-based kNN: cosine similarity of item columns, each item's ``neighbours`` most
    similar items kept, ``score(u, j) = Σ_{i ∈ X_u} sim(i, j)``; ``shrink`` damps the
    similarity of rarely co-occurring items: ``XᵢᵀXⱼ / (‖Xᵢ‖‖Xⱼ‖ + shrink)``."""

    name = "itemknn"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        nnz: int = 0,
        neighbours: int = 100,
        shrink: float = 0.0,
    ) -> None:
        super().__init__(num_users, num_items, nnz)
        if neighbours < 1 or shrink < 0:
            raise ConfigError(
                f"itemknn needs neighbours ≥ 1 and shrink ≥ 0, got {neighbours}, {shrink}"
            )
        self.neighbours = neighbours
        self.shrink = shrink

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "neighbours": self.neighbours, "shrink": self.shrink}

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        co = self._fit_history(train).float()
        norms = co.diagonal().sqrt()
        sim = co / (norms[:, None] * norms[None, :] + self.shrink + 1e-12)
        sim.diagonal().zero_()
        keep = min(self.neighbours, self.num_items - 1)
        top = torch.topk(sim, keep, dim=0)  # each target item j keeps its top source items i
        pruned = torch.zeros_like(sim)
        pruned.scatter_(0, top.indices, top.values)
        self.weights = pruned
        return math.nan


class IALS(FittedModel):
    """Implicit ALS in the form of Rendle et al. (2022, "Revisiting the performance of iALS"):

    ``Σ_{(u,i) observed} (1 − w_u·h_i)² + α₀ Σ_{all u,i} (w_u·h_i)²
    + λ Σ_u (|I_u| + α₀|I|)^ν ‖w_u‖² + λ Σ_i (|U_i| + α₀|U|)^ν ‖h_i‖²``

    with ``α₀`` = ``unobserved_weight``, ``λ`` = ``l2`` and ``ν = 1`` (frequency-scaled L2). Each
    epoch solves every user exactly for fixed items, then every item for fixed users: batched
    ``(d × d)`` systems, ``α₀ HᵀH + Σ_{i∈I_u} h_i h_iᵀ + λ_u I``, assembled chunk by chunk.
    Scores are dot products, so ``score_all`` is one matmul and fold-in works as for MF.
    """

    name = "ials"
    max_epochs = None

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 64,
        l2: float = 0.002,
        unobserved_weight: float = 0.1,
        init_std: float = 0.1,
        generator: torch.Generator | None = None,
        solver: str = "exact",
        cg_steps: int = 3,
    ) -> None:
        super().__init__(num_users, num_items)
        if embedding_dim < 1 or l2 < 0 or unobserved_weight < 0:
            raise ConfigError("ials needs embedding_dim ≥ 1, l2 ≥ 0 and unobserved_weight ≥ 0")
        if solver not in ("exact", "cg") or cg_steps < 1:
            raise ConfigError(f"ials solver must be exact or cg (cg_steps ≥ 1), got {solver!r}")
        self.solver = solver
        self.cg_steps = cg_steps
        self.embedding_dim = embedding_dim
        self.l2 = l2
        self.unobserved_weight = unobserved_weight
        self.init_std = init_std
        scale = init_std / math.sqrt(embedding_dim)
        self.user_embedding = torch.nn.Embedding(num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(num_items, embedding_dim)
        for table in (self.user_embedding, self.item_embedding):
            torch.nn.init.normal_(table.weight, 0.0, scale, generator=generator)
            table.weight.requires_grad_(False)

    def hparams(self) -> dict[str, Any]:
        return {
            "embedding_dim": self.embedding_dim,
            "l2": self.l2,
            "unobserved_weight": self.unobserved_weight,
            "init_std": self.init_std,
            "solver": self.solver,
            "cg_steps": self.cg_steps,
        }

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user_embedding(users) * self.item_embedding(items)).sum(-1)

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T

    def item_vectors(self) -> torch.Tensor | None:
        return self.item_embedding.weight

    @torch.no_grad()
    def fold_in_scores(self, items: torch.Tensor) -> torch.Tensor:
        """The exact iALS solve of one new user's row, item factors fixed."""
        h = self.item_embedding.weight.double()
        alpha = self.unobserved_weight
        reg = self.l2 * (len(items) + alpha * self.num_items)
        observed = h[items]
        system = alpha * (h.T @ h) + observed.T @ observed
        system += reg * torch.eye(h.shape[1], dtype=torch.float64)
        user = torch.linalg.solve(system, observed.sum(0))
        return (h @ user).float()

    def fit_epoch(self, train: Interactions, epoch: int) -> float:
        csr = train.deduplicate().csr
        solve = self._solve if self.solver == "exact" else self._conjugate_gradient
        solve(self.user_embedding.weight, self.item_embedding.weight, csr)
        solve(self.item_embedding.weight, self.user_embedding.weight, csr.T.tocsr())
        return math.nan

    @torch.no_grad()
    def _conjugate_gradient(self, target: torch.Tensor, fixed: torch.Tensor, csr: Any) -> None:
        """``cg_steps`` conjugate-gradient steps on every row's system, warm-started from the
        current rows (as implicit does): ``A x = α₀HᵀH x + Σ_{i∈I_u} h_i (h_iᵀx) + λ_u x`` is
        applied without forming ``A``, so a sweep costs ``O(nnz·d)`` instead of ``O(nnz·d²)``."""
        f = fixed.detach().float()
        d = f.shape[1]
        gram = self.unobserved_weight * (f.T @ f)
        counts = np.diff(csr.indptr)
        reg = torch.as_tensor(
            self.l2 * (counts + self.unobserved_weight * len(f)), dtype=torch.float32
        )
        indices = torch.as_tensor(csr.indices, dtype=torch.long)
        budget = max(1, 2**23 // d)  # observed entries per chunk
        start = 0
        while start < len(counts):
            stop = int(np.searchsorted(csr.indptr, csr.indptr[start] + budget, side="right")) - 1
            stop = min(max(stop, start + 1), len(counts))
            lo, hi = int(csr.indptr[start]), int(csr.indptr[stop])
            row_of = torch.as_tensor(np.repeat(np.arange(stop - start), counts[start:stop]))
            h = f[indices[lo:hi]]
            lam = reg[start:stop, None]

            def apply(
                v: torch.Tensor,
                h: torch.Tensor = h,
                row_of: torch.Tensor = row_of,
                lam: torch.Tensor = lam,
            ) -> torch.Tensor:
                dots = (h * v[row_of]).sum(1, keepdim=True)
                return (v @ gram + lam * v).index_add_(0, row_of, h * dots)

            x = target[start:stop].float()
            b = torch.zeros_like(x).index_add_(0, row_of, h)
            r = b - apply(x)
            p = r.clone()
            rs = (r * r).sum(1)
            for _ in range(self.cg_steps):
                ap = apply(p)
                step = rs / (p * ap).sum(1).clamp_min(1e-30)
                x += step[:, None] * p
                r -= step[:, None] * ap
                new = (r * r).sum(1)
                p = r + (new / rs.clamp_min(1e-30))[:, None] * p
                rs = new
            target[start:stop] = x.to(target.dtype)
            start = stop

    @torch.no_grad()
    def _solve(self, target: torch.Tensor, fixed: torch.Tensor, csr: Any) -> None:
        """Every row of ``target`` exactly, for ``fixed`` and the rows' observed columns.

        ``Σ_{i∈I_u} h_i h_iᵀ`` for a chunk of rows is one sparse × dense product of the chunk's
        0/1 rows with ``vec(h_i h_iᵀ)``; chunks keep it to ~2^24 floats.
        """
        f = fixed.detach().float()
        d = f.shape[1]
        alpha = self.unobserved_weight
        outer = (f[:, :, None] * f[:, None, :]).reshape(len(f), d * d)
        gram = alpha * (f.double().T @ f.double())
        counts = np.diff(csr.indptr)
        reg = torch.as_tensor(self.l2 * (counts + alpha * len(f)))  # frequency-scaled (ν = 1)
        eye = torch.eye(d, dtype=torch.float64)
        rows = max(1, 2**24 // (d * d))
        for start in range(0, len(counts), rows):
            stop = min(start + rows, len(counts))
            part = csr[start:stop]
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                x = torch.sparse_csr_tensor(
                    torch.as_tensor(part.indptr, dtype=torch.long),
                    torch.as_tensor(part.indices, dtype=torch.long),
                    torch.ones(part.nnz),
                    size=part.shape,
                    check_invariants=False,
                )
            systems = (x @ outer).reshape(-1, d, d).double() + gram
            systems += reg[start:stop, None, None] * eye
            rhs = (x @ f).double()
            target[start:stop] = torch.linalg.solve(systems, rhs).to(target.dtype)
