"""An epoch's training samples: every positive and fresh exact negatives, shuffled.

Everything random is keyed by ``(seed, epoch[, part])``, so a resumed run repeats exactly the
epochs an uninterrupted run would, and the samples do not depend on who draws them. An epoch of
more than ``CHUNK_SAMPLES`` samples is drawn in parts (bounded memory on ML-20M-sized data); with
``prefetch`` the next epoch is drawn in a background thread while this one trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from torchcf.data.interactions import Interactions
from torchcf.data.sampling import sample_negatives, sample_negatives_torch

__all__ = ["CHUNK_SAMPLES", "Draw", "EpochSampler"]

CHUNK_SAMPLES = 1 << 24  # an epoch with more samples is drawn in parts (bounded memory)

# (users, items, labels, order): the samples unshuffled and the order to train them in
Draw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class EpochSampler:
    """Draws the epochs of training on ``train`` with ``num_negatives`` per positive.

    With ``pairs`` (the BPR loss) the rows are pairs instead: users ``(n, 1)``, items ``(n, 2)``
    = (positive, fresh negative), one row per positive and negative; labels a placeholder.
    With ``rows`` (a model trained on whole user rows) the samples are the users that have
    training items, once each in a fresh order; items and labels are placeholders.
    With ``by_user`` the positives are drawn as LightGCN's code draws them: each a uniformly
    drawn user (among those with training items), then one of that user's items uniformly, as
    many as there are training pairs; every user weighs the same, however many items they have.
    On a GPU the negatives are drawn on the device too, so an epoch's data never leaves it.
    """

    def __init__(
        self,
        train: Interactions,
        num_negatives: int,
        seed: int,
        device: torch.device,
        *,
        pairs: bool = False,
        rows: bool = False,
        by_user: bool = False,
        prefetch_until: int = 0,
    ) -> None:
        self.train = train
        self.num_negatives = num_negatives
        self.seed = seed
        self.device = device
        self.pairs = pairs
        self.rows = rows
        self.by_user = by_user
        if by_user:  # each user's items (CSR) and the users that have some
            csr = train.csr
            self._indptr, self._indices = csr.indptr.astype(np.int64), csr.indices.astype(np.int64)
            self._degree = np.diff(self._indptr)
            self._active = np.flatnonzero(self._degree)
        self.prefetch_until = prefetch_until  # last epoch to prefetch (0: no prefetching)
        self.pos_users = torch.tensor(train.users, device=device)
        self.pos_items = torch.tensor(train.items, device=device)
        if rows:  # (a user's row is one sample)
            self.pos_users = torch.unique(self.pos_users)
        self._known_keys: torch.Tensor | None = None
        if device.type != "cpu":  # sorted (user, item) keys for sampling on the device
            self._known_keys = torch.as_tensor(train.pair_keys, device=device)
        self._pool: ThreadPoolExecutor | None = None
        self._prefetch: tuple[int, Future[Draw]] | None = None

    @property
    def samples(self) -> int:
        """Samples in one epoch."""
        return len(self.pos_users) * (1 if self.rows else 1 + self.num_negatives)

    def parts(self) -> int:
        """How many parts an epoch is drawn in (1: the whole epoch at once)."""
        return max(1, -(-self.samples // CHUNK_SAMPLES))

    def draw(
        self, epoch: int, part: int | None = None, positives: torch.Tensor | None = None
    ) -> Draw:
        """One epoch's (or one part's: the positives at ``positives``) samples and order."""
        rng = np.random.default_rng([self.seed, epoch] + ([] if part is None else [part]))
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        if self.rows:
            users = self.pos_users
            order = torch.randperm(len(users), generator=gen, device=self.device)
            return (
                users,
                torch.zeros_like(users),
                torch.zeros(len(users), device=self.device),
                order,
            )
        k = self.num_negatives
        pos_users, pos_items = self.pos_users, self.pos_items
        if positives is not None:
            pos_users, pos_items = pos_users[positives], pos_items[positives]
        if self.by_user:
            pos_users, pos_items = self._user_draws(len(pos_users), rng)
        neg_users = pos_users.repeat_interleave(k)
        if self._known_keys is None:  # on the CPU: NumPy's sampler on the same memory
            negatives = torch.from_numpy(sample_negatives(self.train, neg_users.numpy(), rng))
        else:
            negatives = sample_negatives_torch(
                self._known_keys, neg_users, self.train.num_items, gen
            )
        if self.pairs:
            users = neg_users[:, None]
            items = torch.stack([pos_items.repeat_interleave(k), negatives], dim=1)
            labels = torch.zeros(len(users), device=self.device)
        else:
            users = torch.cat([pos_users, neg_users])
            items = torch.cat([pos_items, negatives])
            labels = torch.zeros(len(users), device=self.device)
            labels[: len(pos_users)] = 1.0
        order = torch.randperm(len(users), generator=gen, device=self.device)
        return users, items, labels, order

    def _user_draws(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` positives: uniform users, then a uniform item of each user's."""
        users = self._active[rng.integers(0, len(self._active), n)]
        starts, degree = self._indptr[users], self._degree[users]
        items = self._indices[starts + (rng.random(n) * degree).astype(np.int64)]
        device = self.device
        return torch.from_numpy(users).to(device), torch.from_numpy(items).to(device)

    def shuffled(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole epoch's ``(users, items, labels)`` in training order."""
        users, items, labels, order = self.draw(epoch)
        return users[order], items[order], labels[order]

    def epoch(self, epoch: int) -> Iterator[Draw]:
        """The epoch's draws: the whole epoch, or its parts one at a time (the positives in one
        seeded permutation per epoch, cut into equal chunks, each with its own negatives and
        shuffle)."""
        parts = self.parts()
        if parts == 1:
            yield self._whole(epoch)
            return
        n = len(self.pos_users)
        gen = torch.Generator().manual_seed(
            int(np.random.default_rng([self.seed, epoch, 2]).integers(2**62))
        )
        perm = torch.randperm(n, generator=gen).to(self.device)
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)
        for part in range(parts):
            yield self.draw(epoch, part, perm[bounds[part] : bounds[part + 1]])

    def _whole(self, epoch: int) -> Draw:
        """``draw(epoch)``, from the background thread when it was prefetched."""
        if self._prefetch is not None and self._prefetch[0] == epoch:
            samples = self._prefetch[1].result()
        else:
            samples = self.draw(epoch)
        self._prefetch = None
        if epoch < self.prefetch_until:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="torchcf-samples")
            self._prefetch = (epoch + 1, self._pool.submit(self.draw, epoch + 1))
        return samples

    def close(self) -> None:
        """Stop the background sampler."""
        self._prefetch = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
