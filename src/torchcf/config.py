"""Frozen configuration dataclasses; the CLI flags map 1:1 to their fields."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torchcf.errors import ConfigError

__all__ = [
    "FAST_DEFAULTS",
    "FINETUNE_DEFAULTS",
    "MODEL_DEFAULTS",
    "OPTIMIZERS",
    "TrainConfig",
    "recipe",
]

OPTIMIZERS = ("adam", "lazy-adam", "sgd", "adagrad")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the seed's settings are the defaults)."""

    model: str = "gmf"
    embedding_dim: int = 32
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 0.001
    beta1: float = 0.9  # Adam's moment decays (large-batch recipes lower them)
    beta2: float = 0.999
    lr_schedule: str = "constant"  # or "cosine": epoch e of E trains at lr·½(1 + cos(π(e−1)/E))
    weight_decay: float = 0.0
    num_negatives: int = 4
    eval_negatives: int = 99
    k: int = 10
    validation: bool = True
    select_by: str = "auto"  # "validation", "test", or "auto" (validation when there is one)
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    step: str = "auto"  # "auto" (analytic for MF/GMF), "analytic", "autograd"
    init_std: float = 0.01
    layers: int = 3  # MLP/NeuMF tower depth
    dropout: float = 0.0  # MLP/NeuMF tower dropout
    optimizer: str = "adam"  # "adam", "lazy-adam" (sparse rows), "sgd" or "adagrad"
    biases: bool = False  # MF/BPR: user, item and global biases
    loss: str = "bce"  # "bce" (pointwise, the NCF loss) or "bpr" (pairwise: −log σ(s⁺ − s⁻))
    # baselines (torchcf.baselines): EASE/iALS L2, iALS unobserved weight, item-kNN neighbours
    l2: float | None = None  # None: the model's own default (ease 500, ials 0.002)
    unobserved_weight: float = 0.1
    neighbours: int = 100
    shrink: float = 0.0
    solver: str = "exact"  # iALS: "exact" (batched solves) or "cg" (conjugate gradient steps)
    cg_steps: int = 3
    # draw the next epoch's samples in a background thread while this one trains (pays off with
    # the compiled MF/GMF kernel, which releases the GIL, at large batches and one torch thread)
    prefetch: bool = False
    # bfloat16 autocast of the forward pass (autograd steps; pays off on GPUs, not on this CPU)
    amp: bool = False

    def __post_init__(self) -> None:
        positive = ("embedding_dim", "epochs", "batch_size", "k")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("weight_decay", "patience", "eval_negatives"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.num_negatives < 1:
            raise ConfigError(f"num_negatives must be at least 1, got {self.num_negatives}")
        if self.select_by not in ("auto", "validation", "test"):
            raise ConfigError(f"select_by must be auto, validation or test, got {self.select_by!r}")
        if self.select_by == "validation" and not self.validation:
            raise ConfigError("select_by='validation' needs a validation holdout (validation=True)")
        if self.step not in ("auto", "analytic", "autograd"):
            raise ConfigError(f"step must be auto, analytic or autograd, got {self.step!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.layers < 1:
            raise ConfigError(f"layers must be at least 1, got {self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0:
            raise ConfigError(f"init_std must be positive, got {self.init_std}")
        if self.loss not in ("bce", "bpr"):
            raise ConfigError(f"loss must be bce or bpr, got {self.loss!r}")
        if self.l2 is not None and self.l2 < 0:
            raise ConfigError(f"l2 must be non-negative, got {self.l2}")
        if self.solver not in ("exact", "cg") or self.cg_steps < 1:
            raise ConfigError(f"solver must be exact or cg (cg_steps ≥ 1), got {self.solver!r}")
        if self.unobserved_weight < 0 or self.shrink < 0 or self.neighbours < 1:
            raise ConfigError("unobserved_weight and shrink must be ≥ 0, neighbours ≥ 1")

    def epoch_learning_rate(self, epoch: int) -> float:
        """The learning rate of 1-based ``epoch`` under ``lr_schedule``."""
        if self.lr_schedule == "cosine":
            progress = (epoch - 1) / self.epochs
            return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.learning_rate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Where the seed's settings (batch 256, no regularisation) do not suit a model, its own defaults,
# chosen on the validation holdout of the ML-1M NCF split (benchmarks/RESULTS.md): without
# dropout the MLP tower overfits after ~6-9 epochs; with dropout 0.2 the towers keep improving
# at the paper's batch 256 (MLP 20 epochs: 0.6998 / 0.4241 against 0.6899 / 0.4115 at batch
# 1024; NeuMF 10 epochs: 0.6997 / 0.4253 against 0.6863 / 0.4140 at batch 512), which the
# compiled tower kernel makes affordable (~20 s an epoch here).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"dropout": 0.2, "epochs": 20},
    "neumf": {"dropout": 0.2, "epochs": 12},
    "ials": {"embedding_dim": 64, "epochs": 15, "init_std": 0.1, "solver": "cg"},
    "bpr": {"loss": "bpr"},
}

# Fine-tuning a pretrained NeuMF (the paper uses plain SGD, as Adam's moments are not in the
# pretrained parts): Adam at 1e-4 drifts down from the pretrained mix; from the batch-256 parts,
# Adam at 1e-5 lifts it most on the validation holdout (2 epochs: val HR 0.8339 / NDCG 0.5856,
# against 0.8311 / 0.5816 for SGD lr 0.05 and 0.8303 / 0.5833 for the mix; benchmarks/RESULTS.md).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "learning_rate": 1e-5,
    "epochs": 2,
    "batch_size": 1024,
}


# The fast mode (``--fast``): large batches with a learning-rate recipe tuned on the validation
# holdout of the ML-1M NCF split (benchmarks/RESULTS.md): batch 16384 (300 steps an epoch instead
# of 19,400), Adam with shorter memories (β 0.8/0.95), a cosine decay over 12 epochs, 5 negatives
# per positive, the next epoch's samples drawn in the background. It reaches the seed's quality
# (HR@10 ≈ 0.70) in about a tenth of a second of training per epoch.
FAST_DEFAULTS: dict[str, dict[str, Any]] = {
    model: {
        "batch_size": 16384,
        "learning_rate": learning_rate,
        "beta1": 0.8,
        "beta2": 0.95,
        "lr_schedule": "cosine",
        "epochs": 12,
        "num_negatives": 5,
        "prefetch": True,
    }
    for model, learning_rate in (("gmf", 0.03), ("mf", 0.01))
}


def recipe(
    model: str,
    overrides: dict[str, Any] | None = None,
    finetune: bool = False,
    fast: bool = False,
) -> TrainConfig:
    """The config of ``model``: the seed's settings, the model's own defaults, NeuMF fine-tuning
    defaults when ``finetune``, the fast mode's when ``fast``, then ``overrides`` (what the user
    set explicitly) on top."""
    if fast and model not in FAST_DEFAULTS:
        raise ConfigError(
            f"the fast mode has a recipe for {' and '.join(FAST_DEFAULTS)}, not {model}"
        )
    settings = {
        **MODEL_DEFAULTS.get(model, {}),
        **(FINETUNE_DEFAULTS if finetune else {}),
        **(FAST_DEFAULTS[model] if fast else {}),
        **(overrides or {}),
    }
    settings.pop("model", None)
    return TrainConfig(model=model, **settings)
