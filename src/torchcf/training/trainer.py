"""One trainer for every model: the loop over epochs, evaluation, selection, early stopping,
checkpoints.

Each epoch's samples come from an ``EpochSampler`` (``torchcf.training.epochs``); the step that
turns a batch into an update is the one the model declares (``torchcf.training.steps``); fitted
baselines fit themselves (``fit_epoch``). After every epoch each holdout is evaluated with every
metric of ``METRICS`` and the epoch is kept when it beats the selected one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchcf import distributed
from torchcf.data.split import Split
from torchcf.distributed import World
from torchcf.errors import ConfigError, TorchcfError
from torchcf.evaluation.metrics import hit_rate, ndcg
from torchcf.evaluation.protocols import holdout_ranks
from torchcf.evaluation.sets import set_metrics, set_positions
from torchcf.io import atomic_path
from torchcf.models.base import FittedModel, ScoringModel
from torchcf.training.config import TrainConfig, check_loss
from torchcf.training.epochs import EpochSampler
from torchcf.training.losses import LOSSES
from torchcf.training.steps import CompiledSteps, TrainStep, make_step

__all__ = [
    "METRICS",
    "selection",
    "single_process",
    "EpochRecord",
    "FitResult",
    "Trainer",
    "checkpoint_callback",
    "resolve_device",
]

BATCHES_PER_CALL = 256  # batches a compiled step runs per call (the progress bar's resolution)

# the metrics of every holdout after every epoch, from the held-out items' ranks; their order is
# the order of selection (HR first, NDCG breaks ties)
METRICS: dict[str, Callable[[torch.Tensor, int], float]] = {"hr": hit_rate, "ndcg": ndcg}


def selection(split: Split, select_metric: str, k: int) -> tuple[tuple[str, str], int]:
    """The metrics every epoch reports, the one that selects first (the other breaks ties), and
    their cut-off: ``hr`` then ``ndcg`` at ``k`` for sampled candidates (the NCF protocol),
    ``ndcg`` then ``recall`` at 20 for held-out sets, unless ``select_metric`` names another."""
    if select_metric == "auto":
        return (("hr", "ndcg"), k) if split.ranking == "sampled" else (("ndcg", "recall"), 20)
    name, _, cut = select_metric.partition("@")
    if split.ranking == "sampled":
        if name not in METRICS:
            raise ConfigError(
                f"--select-metric {select_metric}: sampled candidates select by hr or ndcg"
            )
        return (name, "ndcg" if name == "hr" else "hr"), int(cut)
    return (name, "recall" if name == "ndcg" else "ndcg"), int(cut)


def single_process(model: type[ScoringModel]) -> str | None:
    """Why ``model`` trains in one process only (not under torchrun/--nproc), or None."""
    if issubclass(model, FittedModel) and not model.distributed:
        return f"{model.name} fits in one process: run it without torchrun/--nproc"
    if not model.distributed_training:
        return (
            f"{model.name} trains in one process ({model.one_process}): run it without "
            "torchrun/--nproc"
        )
    return None


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
    """One epoch's figures: ``metrics[holdout][name]`` for each holdout (test, validation)
    and each of ``METRICS``."""

    epoch: int
    loss: float  # (of this epoch)
    metrics: dict[str, dict[str, float]]
    train_seconds: float  # (of the epochs since the previous record: ``eval_every`` of them)
    eval_seconds: float

    def score(self, holdout: str) -> tuple[float, ...]:
        """The key that selects the best epoch on ``holdout``: its metrics in their order, the
        selecting one first (a missing holdout scores 0)."""
        values = self.metrics.get(holdout, {})
        return tuple(values.values()) if values else (0.0, 0.0)


@dataclass
class FitResult:
    """What ``Trainer.fit`` returns: the history and the selected epochs."""

    history: list[EpochRecord]
    selected: EpochRecord
    selected_by: str
    best_test: EpochRecord
    stopped_early: bool
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


class Trainer:
    """Trains ``model`` on ``split.train`` and evaluates it on the holdouts after every epoch
    (HR@k and NDCG@k among sampled candidates, ``k`` the cut-off; for held-out sets the
    selection metric and its partner at their cut-off, among every item: ``selection``).

    ``progress(epoch, n, total)`` is called with ``n = 0`` when an epoch starts and with each
    batch's size after its step (``total`` = the epoch's samples); ``callbacks`` after each epoch.
    """

    def __init__(
        self,
        model: ScoringModel,
        split: Split,
        config: TrainConfig,
        *,
        k: int = 10,
        callbacks: Sequence[Callback] = (),
        progress: Callable[[int, int, int], Any] | None = None,
        evaluate_initial: bool = False,
        world: World | None = None,
    ) -> None:
        self.selection = config.select_by
        if self.selection == "auto":
            self.selection = "validation" if split.validation is not None else "test"
        if self.selection == "validation" and split.validation is None:
            raise ConfigError("selecting by validation needs a split with a validation holdout")
        self.model = model
        self.split = split
        self.config = config
        self.metric_names, self.k = selection(split, config.select_metric, k)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.device = resolve_device(config.device)
        self.model.to(self.device)
        # baselines fit themselves (closed form, alternating solves): no optimizer step
        self.fitted = isinstance(model, FittedModel)
        # several processes (torchrun): each trains and evaluates its share (torchcf.distributed)
        self.world = world or distributed.current()
        if not isinstance(model, FittedModel):
            check_loss(type(model), config.loss)
        why = single_process(type(model))
        if self.world.size > 1 and why:
            raise ConfigError(why)
        model.observe(split.train)
        self.step: TrainStep | None = None if self.fitted else make_step(model, config, self.world)
        self.sampler = EpochSampler(
            split.train,
            config.num_negatives,
            config.seed,
            self.device,
            pairs=config.loss == "bpr",
            rows=model.row_training,
            by_user=config.sample_by == "user",
            prefetch_until=config.epochs if config.prefetch else 0,
        )
        holdouts = [h for h in (split.test, split.validation) if h is not None]
        if split.ranking == "sampled":
            self._candidates = {
                h.name: torch.as_tensor(h.candidates(), device=self.device) for h in holdouts
            }
        else:  # held-out sets and what full ranking masks for them: made once
            self._sets = {h.name: (split.sets(h), split.exclude(h)) for h in holdouts}
        self.history: list[EpochRecord] = []
        self.best: EpochRecord | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stop = False
        self._stale = 0
        self.evaluate_initial = evaluate_initial

    @property
    def last_epoch(self) -> int:
        """The last epoch to train: ``epochs``, or fewer for a closed form (refitting changes
        nothing)."""
        last = self.config.epochs
        if isinstance(self.model, FittedModel) and self.model.max_epochs is not None:
            last = min(last, self.model.max_epochs)
        return last

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
        total = self.sampler.samples
        if self.progress is not None:
            self.progress(epoch, 0, total)  # an epoch starts
        loss, count = 0.0, 0
        for users, items, labels, order in self.sampler.epoch(epoch):
            if isinstance(self.step, CompiledSteps):
                count += len(order)
                loss += self._run_calls(epoch, users, items, labels, order, total)
            else:
                logits, shuffled = self._step_batches(
                    epoch, users[order], items[order], labels[order], total
                )
                if len(logits):  # (a rank's share: its samples' loss, summed over the ranks)
                    part_loss = LOSSES[self.config.loss](logits.double(), shuffled.double())
                    loss += float(part_loss) * len(logits)
                count += len(logits)
        loss, samples = distributed.total(self.world, loss, count)  # (over the ranks)
        count = int(samples)
        mean = loss / count if count else 0.0
        if not math.isfinite(mean):
            raise TorchcfError(
                f"training diverged at epoch {epoch} (loss {mean}); try a lower --lr"
            )
        return mean

    def _run_calls(
        self,
        epoch: int,
        users: torch.Tensor,
        items: torch.Tensor,
        labels: torch.Tensor,
        order: torch.Tensor,
        total: int,
    ) -> float:
        """A compiled step: many batches a call (progress per call), shuffled by ``order``, the
        loss summed as it goes."""
        assert isinstance(self.step, CompiledSteps)
        loss = 0.0
        for chunk in order.split(self.config.batch_size * BATCHES_PER_CALL):
            loss += self.step.run(users, items, labels, order=chunk)
            if self.progress is not None:
                self.progress(epoch, len(chunk), total)
        return loss

    def _step_batches(
        self,
        epoch: int,
        users: torch.Tensor,
        items: torch.Tensor,
        labels: torch.Tensor,
        total: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step on each batch of the shuffled epoch; returns (logits, labels) of the samples
        this process trained (on several ranks: its share of every global batch)."""
        size = self.config.batch_size
        logits, trained = [], []
        batches = zip(users.split(size), items.split(size), labels.split(size), strict=True)
        assert self.step is not None
        for batch_users, batch_items, batch_labels in batches:  # (dropout: keyed by the step)
            logits.append(self.step(batch_users, batch_items, batch_labels))
            lo, hi = self.world.span(len(batch_users))  # the share it trained (all, for one)
            trained.append(batch_labels[lo:hi])
            if self.progress is not None:
                self.progress(epoch, len(batch_users), total)
        if not logits:
            return torch.zeros(0), labels[:0]
        return torch.cat(logits), torch.cat(trained)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """The epoch's metrics (``metric_names`` at ``k``) on each holdout."""
        if self.split.ranking != "sampled":
            return self._evaluate_sets()
        out = {}
        for holdout in (self.split.test, self.split.validation):
            if holdout is None:
                continue
            # each rank ranks its share of the users; every rank gets all the ranks, in order
            lo, hi = self.world.span(len(holdout))
            ranks = holdout_ranks(
                self.model,
                holdout,
                self.device,
                candidates=self._candidates[holdout.name],
                share=slice(lo, hi),
            )
            ranks = distributed.gather(ranks, len(holdout), self.world)
            out[holdout.name] = {name: METRICS[name](ranks, self.k) for name in self.metric_names}
        return out

    def _evaluate_sets(self) -> dict[str, dict[str, float]]:
        """Held-out sets among every unmasked item: each rank its share of the users."""
        out: dict[str, dict[str, float]] = {}
        for name, (sets, exclude) in self._sets.items():
            lo, hi = self.world.span(len(sets))
            share = sets.share(lo, hi)
            positions, _ = set_positions(self.model, share, exclude, self.k, self.device)
            values = set_metrics(positions, share.indptr, (self.k,))
            out[name] = {}
            for metric in self.metric_names:
                mine = torch.as_tensor(values[f"{metric}@{self.k}"], dtype=torch.float64)
                every = distributed.gather(mine, len(sets), self.world)
                out[name][metric] = float(every.mean()) if len(every) else math.nan
        return out

    # -- the loop ---------------------------------------------------------------------------------
    def _record(self, epoch: int, loss: float, train_seconds: float) -> EpochRecord:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        return EpochRecord(epoch, loss, metrics, train_seconds, time.perf_counter() - t0)

    def fit(self) -> FitResult:
        """Train the remaining epochs; with ``evaluate_initial``, epoch 0 is the untrained model
        (for a pretrained NeuMF: the α-mix of its parts), which selection may also pick."""
        try:
            return self._fit()
        finally:
            self.sampler.close()

    def _fit(self) -> FitResult:
        selection = self.selection
        if self.evaluate_initial and not self.history:
            self._accept(self._record(0, math.nan, 0.0), selection)
        first = self.history[-1].epoch + 1 if self.history else 1
        every, seconds = self.config.eval_every, 0.0
        for epoch in range(first, self.last_epoch + 1):
            t0 = time.perf_counter()
            loss = self.train_epoch(epoch)
            seconds += time.perf_counter() - t0
            if epoch % every and epoch != self.last_epoch:
                continue  # (evaluated, logged, checkpointed every ``eval_every`` epochs)
            self._accept(self._record(epoch, loss, seconds), selection)
            seconds = 0.0
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
            stopped_early=self.stop and self.history[-1].epoch < self.last_epoch,
            state=self.best_state,
        )

    def _accept(self, record: EpochRecord, selection: str) -> None:
        """Log ``record``, track the best epoch, early stopping (epochs since the best), and run
        the callbacks."""
        since = record.epoch - self.history[-1].epoch if self.history else 1
        self.history.append(record)
        if self.best is None or record.score(selection) > self.best.score(selection):
            self.best = record
            self.best_state = _clone_state(self.model)
            self._stale = 0
        else:
            self._stale += since
        if self.config.patience and self._stale >= self.config.patience:
            self.stop = True
        for callback in self.callbacks:
            callback(self, record)

    # -- checkpoints ------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be continued: training, model and cut-off."""
        return {**self.config.to_dict(), **self.model.settings(), "k": self.k}

    def save_checkpoint(self, path: str | Path) -> None:
        """Everything needed to continue after the last finished epoch, written atomically."""
        state = {
            "settings": self._settings(),
            "model": _clone_state(self.model),
            "step": self.step.state_dict() if self.step is not None else {},
            "history": [asdict(r) for r in self.history],
            "best_epoch": None if self.best is None else self.best.epoch,
            "best_state": self.best_state,
            "stale": self._stale,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by ``save_checkpoint`` with the same settings."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            saved = state["settings"]
        except (OSError, RuntimeError, EOFError, KeyError) as exc:
            raise TorchcfError(f"cannot read checkpoint {path}: {exc}") from None
        # more epochs may follow a finished run, unless they set the learning-rate schedule
        free = ("patience", "device", "prefetch", "eval_every") + (
            ("epochs",) if self.config.lr_schedule == "constant" else ()
        )
        mine = self._settings()
        changed = [
            n
            for n in sorted(set(saved) | set(mine))
            if n not in free and saved.get(n) != mine.get(n)
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


Callback = Callable[[Trainer, EpochRecord], None]


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def checkpoint_callback(path: str | Path) -> Callback:
    """A callback that checkpoints after every epoch."""

    def save(trainer: Trainer, record: EpochRecord) -> None:
        trainer.save_checkpoint(path)

    return save
