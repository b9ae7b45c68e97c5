"""Item-item models: a user's scores are ``X_u @ W`` from the user's training items ``X_u``.

They keep the users' training items as CSR buffers (``history_indptr``, ``history_indices``),
saved with the weights (no pickles), and fold new users in without fitting: ``x @ W``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from torchcf.data.interactions import Interactions
from torchcf.models.base import FittedModel, ModelConfig, gather_scores, row_columns

__all__ = ["FLOAT64_UP_TO", "SPARSE_FROM", "HistoryModel"]

# above this many items, a user's history multiplies W as a sparse row: B·nnz·I work instead of
# B·I² (Gowalla: 41k items, ~24 a user). At or below it (ML-1M's 3,706) the dense product is as
# fast and gives the figures recorded so far bit for bit.
SPARSE_FROM = 8192

# two float64 copies of an items × items matrix fit in 8 GiB up to 23,170 items; beyond, the
# item-item models fit in float32 (Gowalla's 40,981 items: 6.7 GB a copy)
FLOAT64_UP_TO = 23_170


class HistoryModel(FittedModel):
    """Scores ``X_u @ W`` from each user's training items ``X_u`` and an item-item ``W``.

    ``nnz`` (the number of stored training interactions) sizes the history buffer when a saved
    model is loaded; it is not a setting.
    """

    user_tables = ()
    history_indptr: torch.Tensor
    history_indices: torch.Tensor
    weights: torch.Tensor

    def __init__(
        self,
        num_users: int,
        num_items: int,
        config: ModelConfig | None = None,
        *,
        nnz: int = 0,
        **settings: Any,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = self.make_config(config, settings)
        self.pair_width = 64  # per scored pair, to size evaluation batches
        self.register_buffer("history_indptr", torch.zeros(num_users + 1, dtype=torch.long))
        self.register_buffer("history_indices", torch.zeros(nnz, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(num_items, num_items))

    def hparams(self) -> dict[str, Any]:
        return {"nnz": int(self.history_indices.numel()), **super().hparams()}

    def _fit_history(self, train: Interactions, dtype: type = np.float64) -> torch.Tensor:
        """Keep the users' training items; return the item co-occurrence ``XᵀX`` (dense,
        ``dtype``), computed sparse so no users × items matrix is ever materialised."""
        csr = train.deduplicate().csr
        csr.sort_indices()
        self.history_indptr = torch.as_tensor(csr.indptr, dtype=torch.long)
        self.history_indices = torch.as_tensor(csr.indices, dtype=torch.long)
        binary = csr.astype(dtype)
        binary.data[:] = 1.0
        gram = (binary.T @ binary).toarray()  # (SciPy hands a CSC product back in F order)
        return torch.as_tensor(gram.T if gram.flags.f_contiguous else gram)  # symmetric: C order

    def history(self, users: torch.Tensor) -> torch.Tensor:
        """``(B, num_items)`` 0/1 rows of the users' training items."""
        columns, counts = row_columns(self.history_indptr, self.history_indices, users)
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        dense = torch.zeros(len(users), self.num_items, device=users.device)
        dense[rows, columns] = 1.0
        return dense

    def score_all(self, users: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        if self.num_items <= SPARSE_FROM:
            return self.history(users) @ self.weights
        if users.device.type == "cpu":  # SciPy's CSR × dense: 3-9x torch.sparse's here
            history = self._scipy_history(users)
            return torch.from_numpy(np.asarray(history @ self.weights.numpy()))
        return torch.sparse.mm(self._sparse_history(users), self.weights)

    def _scipy_history(self, users: torch.Tensor) -> sp.csr_matrix:
        """The users' training items as a SciPy ``(B, num_items)`` CSR matrix of ones."""
        indptr = self.history_indptr.numpy()
        starts, ends = indptr[users.numpy()], indptr[users.numpy() + 1]
        counts = ends - starts
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        columns = self.history_indices.numpy()[np.repeat(starts, counts) + offsets]
        crow = np.concatenate([[0], np.cumsum(counts)])
        values = np.ones(len(columns), dtype=self.weights.numpy().dtype)
        return sp.csr_matrix((values, columns, crow), shape=(len(users), self.num_items))

    def _sparse_history(self, users: torch.Tensor) -> torch.Tensor:
        """The users' training items as a ``(B, num_items)`` sparse CSR matrix of ones."""
        columns, counts = row_columns(self.history_indptr, self.history_indices, users)
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        values = torch.ones(len(columns), device=users.device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": mm is what we use
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                crow, columns, values, (len(users), self.num_items), device=users.device
            )

    def fold_in_scores(self, items: torch.Tensor) -> torch.Tensor:
        """Item-item models need no fitting: ``x @ W`` for the new user's row ``x``."""
        return self.weights[items].sum(0)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return gather_scores(self, users, items)
