"""One trainer for every neural model.

Each epoch draws fresh exact negatives for the whole epoch in a few vectorised calls (seeded by
``(seed, epoch)``, so a resumed run repeats exactly the epochs an uninterrupted run would), shuffles
index tensors, and feeds batches as slices to the training step. Ranks of a future
``torchrun`` launch take every ``world_size``-th sample of the shuffled epoch (``rank``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchcf.baselines import FittedModel
from torchcf.config import TrainConfig
from torchcf.errors import ConfigError, TorchcfError
from torchcf.evaluation import hit_rate, holdout_ranks, ndcg
from torchcf.io import atomic_path
from torchcf.losses import LOSSES
from torchcf.models import ScoringModel
from torchcf.sampling import sample_negatives, sample_negatives_torch
from torchcf.split import Split
from torchcf.steps import make_step

__all__ = ["EpochRecord", "FitResult", "Trainer", "resolve_device"]

_BATCHES_PER_CALL = 256  # batches a compiled step runs per call (the progress bar's resolution)
_CHUNK_SAMPLES = 1 << 24  # an epoch with more samples is drawn in parts (bounded memory)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a CUDA request without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu or cuda[:N])") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


@dataclass
class EpochRecord:
    """One epoch's figures. ``val_*`` are None without a validation holdout."""

    epoch: int
    loss: float
    test_hr: float
    test_ndcg: float
    val_hr: float | None
    val_ndcg: float | None
    train_seconds: float
    eval_seconds: float

    def score(self, holdout: str) -> tuple[float, float]:
        """(HR, NDCG) on ``holdout``: the key that selects the best epoch."""
        if holdout == "test":
            return (self.test_hr, self.test_ndcg)
        return (self.val_hr or 0.0, self.val_ndcg or 0.0)


@dataclass
class FitResult:
    """What ``Trainer.fit`` returns: the history and the selected epochs."""

    history: list[EpochRecord]
    selected: EpochRecord
    selected_by: str
    best_test: EpochRecord
    stopped_early: bool
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


Callback = Callable[["Trainer", EpochRecord], None]


class Trainer:
    """Trains ``model`` on ``split.train`` and evaluates it on the holdouts after every epoch.

    ``progress(epoch, n, total)`` is called with ``n = 0`` when an epoch starts and with each
    batch's size after its step (``total`` = the epoch's samples); ``callbacks`` after each epoch.
    """

    def __init__(
        self,
        model: ScoringModel,
        split: Split,
        config: TrainConfig,
        callbacks: Sequence[Callback] = (),
        rank: int = 0,
        world_size: int = 1,
        progress: Callable[[int, int, int], Any] | None = None,
        evaluate_initial: bool = False,
    ) -> None:
        if world_size > 1 and not (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            raise ConfigError("world_size > 1 needs an initialised torch.distributed process group")
        self.selection = config.select_by
        if self.selection == "auto":
            self.selection = "validation" if split.validation is not None else "test"
        if self.selection == "validation" and split.validation is None:
            raise ConfigError("selecting by validation needs a split with a validation holdout")
        self.model = model
        self.split = split
        self.config = config
        self.callbacks = list(callbacks)
        self.rank, self.world_size = rank, world_size
        self.progress = progress
        self.device = resolve_device(config.device)
        self.model.to(self.device)
        # baselines fit themselves (closed form, alternating solves): no optimizer step
        self.fitted = isinstance(model, FittedModel)
        self.step = None if self.fitted else make_step(self.model, config)
        train = split.train
        self._pos_users = torch.tensor(train.users, device=self.device)
        self._pos_items = torch.tensor(train.items, device=self.device)
        self._known_keys: torch.Tensor | None = None
        if self.device.type != "cpu":  # sorted (user, item) keys for sampling on the device
            self._known_keys = torch.as_tensor(train.pair_keys, device=self.device)
        self._candidates = {
            h.name: torch.as_tensor(h.candidates(), device=self.device)
            for h in (split.test, split.validation)
            if h is not None
        }
        self.history: list[EpochRecord] = []
        self.best: EpochRecord | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stop = False
        self._stale = 0
        self.evaluate_initial = evaluate_initial
        self._pool: ThreadPoolExecutor | None = None
        self._prefetch: (
            tuple[int, Future[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] | None
        ) = None

    # -- data --------------------------------------------------------------------------------
    def epoch_samples(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shuffled ``(users, items, labels)`` of one epoch: every positive, fresh negatives.

        With the BPR loss the rows are pairs instead: users ``(n, 1)``, items ``(n, 2)`` =
        (positive, fresh negative), one row per positive and negative; labels a placeholder.
        """
        users, items, labels, order = self.epoch_draw(epoch)
        return users[order], items[order], labels[order]

    def epoch_draw(
        self, epoch: int, part: int | None = None, positives: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One epoch's ``(users, items, labels)`` unshuffled, and the training ``order``
        (a seeded permutation; this rank's share of it under ``torchrun``).

        An epoch of more than ``_CHUNK_SAMPLES`` samples is drawn in ``part``s: the positives in
        a seeded random order, cut into chunks (``positives``: the chunk's positions), each with
        its fresh negatives and its own shuffle, so memory stays bounded on data sets like ML-20M
        (``epoch_parts``).
        On a GPU the negatives are drawn on the device too (``sample_negatives_torch``), so an
        epoch's data never leaves it.
        """
        rng = np.random.default_rng([self.config.seed, epoch] + ([] if part is None else [part]))
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        k = self.config.num_negatives
        if positives is None:
            pos_users, pos_items = self._pos_users, self._pos_items
        else:
            pos_users, pos_items = self._pos_users[positives], self._pos_items[positives]
        neg_users = pos_users.repeat_interleave(k)
        if self._known_keys is None:  # on the CPU: NumPy's sampler on the same memory
            negatives = torch.from_numpy(sample_negatives(self.split.train, neg_users.numpy(), rng))
        else:
            negatives = sample_negatives_torch(
                self._known_keys, neg_users, self.split.train.num_items, gen
            )
        if self.config.loss == "bpr":
            positives = pos_items.repeat_interleave(k)
            users, items = neg_users[:, None], torch.stack([positives, negatives], dim=1)
            labels = torch.zeros(len(users), device=self.device)
        else:
            users = torch.cat([pos_users, neg_users])
            items = torch.cat([pos_items, negatives])
            labels = torch.zeros(len(users), device=self.device)
            labels[: len(pos_users)] = 1.0
        order = torch.randperm(len(users), generator=gen, device=self.device)
        if self.world_size > 1:
            order = order[self.rank :: self.world_size]
        return users, items, labels, order

    def _parts(self) -> int:
        """How many parts an epoch is drawn in (1: the whole epoch at once)."""
        samples = len(self._pos_users) * (1 + self.config.num_negatives)
        return max(1, -(-samples // _CHUNK_SAMPLES))

    def epoch_parts(
        self, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's ``epoch_draw``s: the whole epoch, or its parts one at a time (the
        positives in one seeded permutation per epoch, cut into equal chunks)."""
        parts = self._parts()
        if parts == 1:
            yield self._draw(epoch)
            return
        n = len(self._pos_users)
        gen = torch.Generator().manual_seed(
            int(np.random.default_rng([self.config.seed, epoch, 2]).integers(2**62))
        )
        perm = torch.randperm(n, generator=gen).to(self.device)
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)
        for part in range(parts):
            yield self.epoch_draw(epoch, part, perm[bounds[part] : bounds[part + 1]])

    def _draw(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``epoch_draw``, from the background thread when it was prefetched."""
        if self._prefetch is not None and self._prefetch[0] == epoch:
            samples = self._prefetch[1].result()
        else:
            samples = self.epoch_draw(epoch)
        self._prefetch = None
        if self.config.prefetch and epoch < self.config.epochs:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="torchcf-samples")
            self._prefetch = (epoch + 1, self._pool.submit(self.epoch_draw, epoch + 1))
        return samples

    def close(self) -> None:
        """Stop the background sampler (``fit`` does this when it returns)."""
        self._prefetch = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- one epoch ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        """One pass over the epoch's samples; returns the mean training loss (NaN for a fitted
        baseline, which ``fit_epoch`` fits instead)."""
        if self.step is None:
            assert isinstance(self.model, FittedModel)
            with torch.no_grad():
                return self.model.fit_epoch(self.split.train, epoch)
        self.step.set_learning_rate(self.config.epoch_learning_rate(epoch))
        self.model.train()
        total = len(self._pos_users) * (1 + self.config.num_negatives)
        if self.world_size > 1:
            total = -(-total // self.world_size)
        if self.progress is not None:
            self.progress(epoch, 0, total)  # an epoch starts
        run = getattr(self.step, "run", None)
        loss, count = 0.0, 0
        for number, (users, items, labels, order) in enumerate(self.epoch_parts(epoch)):
            count += len(order)
            if run is not None:
                # a compiled kernel: many batches a call (progress per call), shuffled by
                # ``order``, the loss summed as it goes
                for chunk in order.split(self.config.batch_size * _BATCHES_PER_CALL):
                    loss += run(users, items, labels, order=chunk)
                    if self.progress is not None:
                        self.progress(epoch, len(chunk), total)
            else:
                logits, shuffled = self._step_batches(
                    epoch, number, users[order], items[order], labels[order], total
                )
                part_loss = LOSSES[self.config.loss](logits.double(), shuffled.double())
                loss += float(part_loss) * len(order)
        mean = loss / count if count else 0.0
        if not math.isfinite(mean):
            raise TorchcfError(
                f"training diverged at epoch {epoch} (loss {mean}); try a lower --lr"
            )
        return mean

    def _step_batches(
        self,
        epoch: int,
        part: int,
        users: torch.Tensor,
        items: torch.Tensor,
        labels: torch.Tensor,
        total: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step on each batch of the shuffled epoch; returns (logits, labels)."""
        size = self.config.batch_size
        logits = []
        batches = zip(users.split(size), items.split(size), labels.split(size), strict=True)
        # dropout draws from torch's global generator (modules take none): seed it per epoch
        # inside a fork, so runs and resumed runs repeat and the caller's RNG is left untouched
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            key = [self.config.seed, epoch, 1] + ([part] if part else [])
            torch.manual_seed(int(np.random.default_rng(key).integers(2**62)))
            assert self.step is not None
            for batch_users, batch_items, batch_labels in batches:
                logits.append(self.step(batch_users, batch_items, batch_labels))
                if self.progress is not None:
                    self.progress(epoch, len(batch_users), total)
        return (torch.cat(logits) if logits else torch.zeros(0)), labels

    def evaluate(self) -> dict[str, tuple[float, float]]:
        """(HR@k, NDCG@k) on each holdout."""
        k = self.config.k
        out = {}
        for holdout in (self.split.test, self.split.validation):
            if holdout is None:
                continue
            ranks = holdout_ranks(
                self.model, holdout, self.device, candidates=self._candidates[holdout.name]
            )
            out[holdout.name] = (hit_rate(ranks, k), ndcg(ranks, k))
        return out

    # -- the loop ---------------------------------------------------------------------------------
    def _record(self, epoch: int, loss: float, train_seconds: float) -> EpochRecord:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        val = metrics.get("validation")
        return EpochRecord(
            epoch=epoch,
            loss=loss,
            test_hr=metrics["test"][0],
            test_ndcg=metrics["test"][1],
            val_hr=None if val is None else val[0],
            val_ndcg=None if val is None else val[1],
            train_seconds=train_seconds,
            eval_seconds=time.perf_counter() - t0,
        )

    def fit(self) -> FitResult:
        """Train the remaining epochs; with ``evaluate_initial``, epoch 0 is the untrained model
        (for a pretrained NeuMF: the α-mix of its parts), which selection may also pick."""
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> FitResult:
        selection = self.selection
        if self.evaluate_initial and not self.history:
            self._accept(self._record(0, math.nan, 0.0), selection)
        first = self.history[-1].epoch + 1 if self.history else 1
        last = self.config.epochs
        if isinstance(self.model, FittedModel) and self.model.max_epochs is not None:
            last = min(last, self.model.max_epochs)  # closed form: refitting changes nothing
        for epoch in range(first, last + 1):
            t0 = time.perf_counter()
            loss = self.train_epoch(epoch)
            record = self._record(epoch, loss, time.perf_counter() - t0)
            self._accept(record, selection)
            if self.stop:
                break
        if self.best is None or self.best_state is None:
            raise TorchcfError("no epoch was trained")
        best_test = max(self.history, key=lambda r: r.score("test"))
        return FitResult(
            history=list(self.history),
            selected=self.best,
            selected_by=selection,
            best_test=best_test,
            stopped_early=self.stop and self.history[-1].epoch < last,
            state=self.best_state,
        )

    def _accept(self, record: EpochRecord, selection: str) -> None:
        """Log ``record``, track the best epoch, early stopping, and run the callbacks."""
        self.history.append(record)
        if self.best is None or record.score(selection) > self.best.score(selection):
            self.best = record
            self.best_state = _clone_state(self.model)
            self._stale = 0
        else:
            self._stale += 1
        if self.config.patience and self._stale >= self.config.patience:
            self.stop = True
        for callback in self.callbacks:
            callback(self, record)

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> None:
        """Everything needed to continue after the last finished epoch, written atomically."""
        state = {
            "config": self.config.to_dict(),
            "model": _clone_state(self.model),
            "step": self.step.state_dict() if self.step is not None else {},
            "history": [dataclasses.asdict(r) for r in self.history],
            "best_epoch": None if self.best is None else self.best.epoch,
            "best_state": self.best_state,
            "stale": self._stale,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by ``save_checkpoint`` with the same config."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            raise TorchcfError(f"cannot read checkpoint {path}: {exc}") from None
        saved = TrainConfig.from_dict(state["config"])
        # more epochs may follow a finished run, unless they set the learning-rate schedule
        free = ("patience", "device", "prefetch") + (
            ("epochs",) if self.config.lr_schedule == "constant" else ()
        )
        changed = [
            name
            for name, value in saved.to_dict().items()
            if name not in free and getattr(self.config, name) != value
        ]
        if changed:
            raise ConfigError(
                f"checkpoint {path} was made with other settings: {', '.join(changed)}"
            )
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(state["model"][name])
        if self.step is not None:
            self.step.load_state_dict(state["step"])
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.best_state = state["best_state"]
        self.best = next((r for r in self.history if r.epoch == state["best_epoch"]), None)
        self._stale = int(state["stale"])


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def checkpoint_callback(path: str | Path) -> Callback:
    """A callback that checkpoints after every epoch."""

    def save(trainer: Trainer, record: EpochRecord) -> None:
        trainer.save_checkpoint(path)

    return save


__all__ += ["checkpoint_callback"]
