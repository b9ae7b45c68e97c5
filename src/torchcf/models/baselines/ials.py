"""Implicit ALS in the form of Rendle et al. (2022), exact or conjugate-gradient solves."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from torchcf import distributed, native
from torchcf.data.interactions import Interactions
from torchcf.models.base import (
    FITTED_TRAINING,
    Choice,
    FittedModel,
    FloatRange,
    ModelConfig,
    ModelSpec,
    factors_setting,
    init_std_setting,
)
from torchcf.settings import between, setting

__all__ = ["IALS", "IALSConfig", "SPEC"]


@dataclass(frozen=True)
class IALSConfig(ModelConfig):
    owner: ClassVar[str] = "ials"
    embedding_dim: int = factors_setting(64)
    l2: float = setting(0.002, "iALS: the L2 penalty λ (frequency-scaled)", check=between(0, 1e12))
    unobserved_weight: float = setting(
        0.1, "iALS: the weight α₀ of every unobserved pair", check=between(0, 1e6)
    )
    init_std: float = init_std_setting(0.1)
    solver: str = setting(
        "cg",
        "iALS: cg (conjugate-gradient steps, fast) or exact (batched solves)",
        choices=("cg", "exact"),
    )
    cg_steps: int = setting(3, "iALS: conjugate-gradient steps per sweep", check=between(1, 1000))


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
    Config = IALSConfig
    max_epochs = None
    distributed = True
    use_kernel = True  # the compiled CG sweep where it is built (tests compare both paths)

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: IALSConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = self.make_config(config, settings)
        self.solver = self.config.solver
        self.cg_steps = self.config.cg_steps
        self.embedding_dim = embedding_dim = self.config.embedding_dim
        self.l2 = self.config.l2
        self.unobserved_weight = self.config.unobserved_weight
        self.init_std = self.config.init_std
        scale = self.init_std / math.sqrt(embedding_dim)
        self.user_embedding = torch.nn.Embedding(num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(num_items, embedding_dim)
        for table in (self.user_embedding, self.item_embedding):
            torch.nn.init.normal_(table.weight, 0.0, scale, generator=generator)
            table.weight.requires_grad_(False)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user_embedding(users) * self.item_embedding(items)).sum(-1)

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T

    def item_vectors(self) -> torch.Tensor | None:
        return self.item_embedding.weight

    def dot_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight

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
        by_user, by_item = self._matrices(train)
        users, items = self.user_embedding.weight, self.item_embedding.weight
        self._half_sweep(users, items, by_user)
        self._half_sweep(items, users, by_item)
        return math.nan

    @torch.no_grad()
    def _half_sweep(self, target: torch.Tensor, fixed: torch.Tensor, rows: Rows) -> None:
        """Solve every row of ``target`` for ``fixed``. In a distributed run each rank solves
        its share of the rows (each row's solve reads only ``fixed`` and the row itself, so it
        is the one-process solve) and the shares are all-gathered before the other side."""
        world = distributed.current()
        lo, hi = world.span(len(target))
        mine, share = target[lo:hi], rows.part(lo, hi)
        if self.solver == "exact":
            self._solve(mine, fixed, share.csr)
        else:
            self._conjugate_gradient(mine, fixed, share)
        if world.size > 1:
            target.copy_(distributed.gather(mine, len(target), world))

    def _matrices(self, train: Interactions) -> tuple[Rows, Rows]:
        """``train``'s users × items rows and items × users rows, made once per training set."""
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] is not train:
            csr = train.deduplicate().csr
            cached = self._cached = (train, Rows.of(csr), Rows.of(csr.T.tocsr()))
        return cached[1], cached[2]

    @torch.no_grad()
    def _conjugate_gradient(self, target: torch.Tensor, fixed: torch.Tensor, rows: Rows) -> None:
        """``cg_steps`` conjugate-gradient steps on every row's system, warm-started from the
        current rows (as implicit does): ``A x = α₀HᵀH x + Σ_{i∈I_u} h_i (h_iᵀx) + λ_u x`` is
        applied without forming ``A``, so a sweep costs ``O(nnz·d)`` instead of ``O(nnz·d²)``.
        The compiled kernel (``torchcf.native``) runs the rows in parallel, each in cache; where
        it is not built, the same steps run as tensor ops over chunks of rows."""
        f = fixed.detach().float().contiguous()
        gram = self.unobserved_weight * (f.T @ f)
        reg = (self.l2 * (rows.counts + self.unobserved_weight * len(f))).float()
        kernel = native.load() if target.device.type == "cpu" and self.use_kernel else None
        if kernel is not None and target.dtype == torch.float32 and target.is_contiguous():
            kernel.ials_cg(
                target, f, gram.contiguous(), rows.indptr, rows.indices, reg, self.cg_steps
            )
            return
        self._tensor_cg(target, f, gram, reg, rows)

    def _tensor_cg(
        self, target: torch.Tensor, f: torch.Tensor, gram: torch.Tensor, reg: torch.Tensor,
        rows: Rows,
    ) -> None:  # fmt: skip
        """``_conjugate_gradient`` as tensor ops, rows in chunks of about 2^23 entries."""
        d = f.shape[1]
        indptr, indices = rows.csr.indptr, rows.indices
        counts = np.diff(indptr)
        budget = max(1, 2**23 // d)  # observed entries per chunk
        start = 0
        while start < len(counts):
            stop = int(np.searchsorted(indptr, indptr[start] + budget, side="right")) - 1
            stop = min(max(stop, start + 1), len(counts))
            lo, hi = int(indptr[start]), int(indptr[stop])
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


@dataclass(frozen=True)
class Rows:
    """A CSR matrix of 0/1 rows and what the solvers read of it, as tensors."""

    csr: Any
    indptr: torch.Tensor  # int64
    indices: torch.Tensor  # int64
    counts: torch.Tensor  # float64: entries per row
    parts: dict[tuple[int, int], Rows] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, csr: Any) -> Rows:
        indptr = torch.as_tensor(csr.indptr, dtype=torch.long)
        counts = (indptr[1:] - indptr[:-1]).double()
        return cls(csr, indptr, torch.as_tensor(csr.indices, dtype=torch.long), counts)

    def part(self, lo: int, hi: int) -> Rows:
        """Rows ``lo … hi − 1`` (a rank's share; all of them: this one), made once."""
        if (lo, hi) == (0, self.csr.shape[0]):
            return self
        if (lo, hi) not in self.parts:
            self.parts[(lo, hi)] = Rows.of(self.csr[lo:hi])
        return self.parts[(lo, hi)]


SPEC = ModelSpec(
    IALS,
    "implicit ALS with frequency-scaled L2 (Rendle et al. 2022)",
    defaults={"epochs": 15},
    search={
        "embedding_dim": Choice((32, 64, 128, 192)),
        "l2": FloatRange(1e-4, 3e-2, log=True),
        "unobserved_weight": FloatRange(0.01, 1.0, log=True),
    },
    training=FITTED_TRAINING,
)
