"""Building blocks shared by the neural models: initialisers, the NCF head, the MLP tower with
its split first layer, dropout, and the layouts that the compiled training steps read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "BLOCK_PAIRS",
    "DotLayout",
    "Dropout",
    "dropout_keep",
    "KernelLayout",
    "StepKey",
    "TowerLayout",
    "head",
    "init_embedding",
    "keyed_generator",
    "tower",
    "tower_layout",
    "tower_output",
]


def head(width: int, generator: torch.Generator | None) -> nn.Linear:
    """The NCF output layer ``hᵀx + b``: ``h`` kaiming-uniform (a=1, sigmoid gain), ``b`` = 0."""
    layer = nn.Linear(width, 1)
    nn.init.kaiming_uniform_(layer.weight, a=1, nonlinearity="sigmoid", generator=generator)
    nn.init.zeros_(layer.bias)
    return layer


def init_embedding(weight: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    nn.init.normal_(weight, 0.0, std, generator=generator)


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


_MASK64 = (1 << 64) - 1
_GOLDEN, _MUL1, _MUL2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (as the compiled kernel's ``mix``)."""
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * _MUL1) & _MASK64
    x = ((x ^ (x >> 27)) * _MUL2) & _MASK64
    return x ^ (x >> 31)


def _signed(x: int) -> int:
    """The int64 with the bits of the uint64 ``x``."""
    return x - (1 << 64) if x >> 63 else x


def _shift(t: torch.Tensor, bits: int) -> torch.Tensor:
    """The logical right shift of int64 tensors' bits (``>>`` on int64 is arithmetic)."""
    return (t >> bits) & ((1 << (64 - bits)) - 1)


def _mix(t: torch.Tensor) -> torch.Tensor:
    """``_mix_int`` elementwise on int64 tensors (their arithmetic wraps like uint64's)."""
    t = t + _signed(_GOLDEN)
    t = (t ^ _shift(t, 30)) * _signed(_MUL1)
    t = (t ^ _shift(t, 27)) * _signed(_MUL2)
    return t ^ _shift(t, 31)


def dropout_keep(
    seed: int,
    step: int,
    layer: int,
    count: int,
    threshold: int,
    scale: float,
    device: torch.device | str = "cpu",
    start: int = 0,
) -> torch.Tensor:
    """The dropout factors of tower layer ``layer`` at training step ``step`` (1-based), for
    units ``start`` … ``start + count - 1`` in row-major order: 0 where unit ``j``'s random
    byte is below ``threshold``, else ``scale``. The bytes come from splitmix64 keyed by (seed,
    step, layer) and the unit's position, the generator of the compiled tower kernel (tested
    equal to its ``dropout_keep``), so masks depend on no thread, device, call size or global
    state; a rank training rows ``r…`` of a global batch takes ``start = r × width``."""
    key = _mix_int((seed & _MASK64) ^ _mix_int((step * 64 + layer) & _MASK64))
    first, skip = divmod(start, 8)
    blocks = torch.arange(first, (start + count + 7) // 8, dtype=torch.int64, device=device)
    units = _mix(blocks + _signed(key)).view(torch.uint8)[skip : skip + count]  # unit 8j + b
    factor = torch.tensor(scale, dtype=torch.float32, device=device)
    return (units >= threshold).to(torch.float32) * factor


class Dropout(nn.Module):
    """Inverted dropout with the compiled kernel's masks (``dropout_keep``).

    The drop probability is rounded to a multiple of 1/256 (0.2 → 51/256 = 0.1992) and the kept
    units are scaled by the exact 1/(1 - p) of that rounding, so expectations are unchanged.
    The training step sets ``key = (seed, step, row)`` before each batch (``row``: the batch's
    first row in the global batch, 0 but on a rank of a distributed run), so a run's masks are
    the kernel's, repeat on a resumed run and do not depend on the number of ranks; without a key
    (a model used outside a step) each call draws a seed from torch's global generator
    (repeatable under ``torch.manual_seed``). ``layer`` is the tower layer the dropout follows.
    """

    def __init__(self, p: float, layer: int = 0) -> None:
        super().__init__()
        self.p = p
        self.layer = layer
        self.threshold = max(1, round(p * 256))  # bytes below it are dropped
        self.scale = 256.0 / (256 - self.threshold)
        self.key: tuple[int, int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        seed, step, row = self.key or (int(torch.randint(2**62, (1,))), 0, 0)
        width = x.numel() // max(1, x.shape[0]) if x.dim() else 1
        keep = dropout_keep(
            seed, step, self.layer, x.numel(), self.threshold, self.scale, x.device, row * width
        )
        return _MaskedScale.apply(x, keep.view(x.shape).to(x.dtype))

    def extra_repr(self) -> str:
        return f"p={self.p}, layer={self.layer}"


class StepKey(nn.Module):
    """Keys a model's random draws other than dropout (LightGCN's noise): the training step
    sets ``key = (seed, step, row)`` before each batch, as it does a ``Dropout``'s, so a resumed
    run draws what an uninterrupted one would; without a key (outside a step) ``generator``
    gives None (torch's global generator)."""

    def __init__(self) -> None:
        super().__init__()
        self.key: tuple[int, int, int] | None = None

    def generator(self, device: torch.device, stream: int = 0) -> torch.Generator | None:
        """A generator seeded by the key and ``stream`` (one per kind of draw)."""
        return None if self.key is None else keyed_generator(self.key, stream, device)


def keyed_generator(
    key: tuple[int, int, int], stream: int, device: torch.device
) -> torch.Generator:
    """A torch generator seeded by a step's ``key`` and a ``stream`` (one per kind of draw)."""
    seed = int(np.random.default_rng([*key, stream]).integers(2**62))
    return torch.Generator(device=device).manual_seed(seed)


def tower(
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
            modules.append(Dropout(dropout, layer=level))
        width = out
    return nn.Sequential(*modules)


def tower_output(
    layers: nn.Sequential,
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
    first = layers[0]
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
    return layers[1:](user_part + item_part + first.bias)


BLOCK_PAIRS = 2**13  # tower_scores' (user, item) pairs a block


@torch.no_grad()
def tower_scores(
    layers: nn.Sequential,
    user_table: nn.Embedding,
    item_table: nn.Embedding,
    users: torch.Tensor,
    head_weight: torch.Tensor,
    pairs: int | None = None,
) -> torch.Tensor:
    """``head_weight · tower([p_u; q_i])`` for each of ``users`` and every item, ``(B, M)``
    (no head bias): full ranking without the per-pair Python and lookups of ``forward``.

    The first layer's halves are computed once (every item's once, not once per chunk); then
    blocks of about ``pairs`` (user, item) pairs go through the later layers as single
    ``addmm`` calls with in-place ReLUs (the same arithmetic as ``forward`` in eval mode).
    Blocks small enough to stay in cache (``BLOCK_PAIRS``, 2^13 pairs: 4 MB of first-layer
    activations) are 2.5x faster than 2^18 pairs, whose sums and ReLUs stream through memory
    (``benchmarks/full_rank_speed.py``).
    """
    pairs = pairs or BLOCK_PAIRS
    first = layers[0]
    assert isinstance(first, nn.Linear)
    width = user_table.embedding_dim
    user_part = user_table(users) @ first.weight[:, :width].T + first.bias
    item_part = item_table.weight @ first.weight[:, width:].T
    later = [m for m in list(layers)[1:] if isinstance(m, nn.Linear)]
    num_items = item_part.shape[0]
    out = torch.empty(len(users), num_items, device=user_part.device, dtype=user_part.dtype)
    cols = min(num_items, pairs)
    rows = max(1, pairs // cols)
    for s in range(0, len(users), rows):
        for c in range(0, num_items, cols):
            block = user_part[s : s + rows, None, :] + item_part[None, c : c + cols]
            h = block.relu_().reshape(-1, block.shape[-1])
            for linear in later:
                h = torch.addmm(linear.bias, h, linear.weight.T).relu_()
            out[s : s + rows, c : c + cols] = (h @ head_weight).view(block.shape[0], -1)
    return out


@dataclass(frozen=True)
class DotLayout:
    """What the compiled MF/GMF step updates, in this order: the user table, the item table
    (read as one table of user rows then item rows), and the head ``(h, b)`` when there is one
    (GMF; MF's head is a fixed all-ones vector)."""

    user_table: torch.Tensor
    item_table: torch.Tensor
    head: tuple[torch.Tensor, torch.Tensor] | None

    def parameters(self) -> list[torch.Tensor]:
        return [self.user_table, self.item_table, *(self.head or ())]


@dataclass(frozen=True)
class TowerLayout:
    """What the compiled MLP/NeuMF step updates, in this order: the GMF tables (NeuMF), the
    MLP tables (users then items), each tower layer's weight and bias, the head ``(h, b)``
    (``h`` = [GMF part; tower part]); and the tower's dropout (None: no dropout)."""

    gmf_tables: tuple[torch.Tensor, torch.Tensor] | None
    mlp_tables: tuple[torch.Tensor, torch.Tensor]
    layers: tuple[nn.Linear, ...]
    head: tuple[torch.Tensor, torch.Tensor]
    dropout: Dropout | None

    def parameters(self) -> list[torch.Tensor]:
        weights = [p for layer in self.layers for p in (layer.weight, layer.bias)]
        return [*(self.gmf_tables or ()), *self.mlp_tables, *weights, *self.head]

    @property
    def gmf_dim(self) -> int:
        return 0 if self.gmf_tables is None else self.gmf_tables[0].shape[1]

    @property
    def width(self) -> int:
        """The width of a user's (an item's) MLP row."""
        return self.mlp_tables[0].shape[1]

    @property
    def layer_widths(self) -> list[int]:
        return [layer.out_features for layer in self.layers]


KernelLayout = DotLayout | TowerLayout


def tower_layout(
    layers: nn.Sequential,
    mlp_tables: tuple[nn.Embedding, nn.Embedding],
    head_layer: nn.Linear,
    gmf_tables: tuple[nn.Embedding, nn.Embedding] | None = None,
) -> TowerLayout:
    """The ``TowerLayout`` of a model built from ``tower(...)`` and ``head(...)``."""
    drops = [m for m in layers if isinstance(m, Dropout)]
    return TowerLayout(
        gmf_tables=None if gmf_tables is None else (gmf_tables[0].weight, gmf_tables[1].weight),
        mlp_tables=(mlp_tables[0].weight, mlp_tables[1].weight),
        layers=tuple(m for m in layers if isinstance(m, nn.Linear)),
        head=(head_layer.weight, head_layer.bias),
        dropout=drops[0] if drops else None,
    )
