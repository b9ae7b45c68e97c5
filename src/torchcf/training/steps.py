"""Training steps: the one place where a batch becomes a parameter update.

``AutogradStep`` works for any model (autograd + a torch optimizer); ``FlatAdamStep`` is autograd
with Adam fused over one flat buffer holding every parameter. ``DotProductAdamStep`` is the exact
same update for the MF/GMF family with the gradient written out by hand, and
``NativeDotProductAdamStep`` / ``NativeTowerAdamStep`` run that hand-written update for MF/GMF and
for MLP/NeuMF as compiled kernels, many batches a call: identical results (tested against
``torch.optim.Adam``), several times less per-step overhead on a CPU.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from torchcf import native
from torchcf.distributed import World
from torchcf.errors import ConfigError
from torchcf.models.base import ScoringModel
from torchcf.models.layers import DotLayout, Dropout, StepKey, TowerLayout
from torchcf.training.losses import LOSSES

if TYPE_CHECKING:
    from torchcf.training.config import TrainConfig

__all__ = [
    "AutogradStep",
    "DistributedStep",
    "DotProductAdamStep",
    "FlatAdamStep",
    "NativeDotProductAdamStep",
    "NativeTowerAdamStep",
    "CompiledSteps",
    "TowerOptimizer",
    "TrainStep",
    "make_optimizer",
    "make_step",
]


class TrainStep(Protocol):
    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Update the parameters on one batch; return the batch's logits before the update (on
        a rank of a distributed run: the logits of its share, ``World.span`` of the batch).

        The trainer computes the epoch's loss from them in one vectorised call at the end, which
        keeps a loss reduction (several small ops) out of every step.
        """
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def set_learning_rate(self, lr: float) -> None: ...


def make_optimizer(params: Sequence[torch.Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` (fused kernels where torch has them)."""
    fused = params[0].device.type in ("cpu", "cuda")
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, fused=fused)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    betas = (config.beta1, config.beta2)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd, fused=fused)


def _forward(
    model: ScoringModel, config: TrainConfig
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The model's forward pass, under bfloat16 autocast with ``config.amp`` (float32 logits)."""
    if not config.amp:
        return model
    device_type = next(model.parameters()).device.type

    def forward(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return model(users, items).float()

    return forward


class DropoutKeys:
    """Keys the model's dropout layers (and its other keyed draws, ``StepKey``) by (seed, step)
    before each batch: the compiled tower kernel's masks, so the autograd path and the kernel
    drop the same units, and a resumed run draws what an uninterrupted one would."""

    def __init__(self, model: ScoringModel, seed: int) -> None:
        self.dropouts = [m for m in model.modules() if isinstance(m, Dropout | StepKey)]
        self.seed = seed
        self.taken = 0  # optimizer steps taken

    def next_step(self, row: int = 0) -> None:
        """Key the masks of the next step; ``row``: the batch's first row in the global batch
        (a rank's share of it starts there)."""
        self.taken += 1
        for layer in self.dropouts:
            layer.key = (self.seed, self.taken, row)


class ForwardLoss:
    """What every autograd step starts with: the dropout layers keyed for the step, the
    forward pass (under ``--amp``'s autocast), the loss of the batch."""

    def __init__(self, model: ScoringModel, config: TrainConfig) -> None:
        self.loss = LOSSES[config.loss]
        self.model = model
        self.forward = _forward(model, config)
        self.keys = DropoutKeys(model, config.seed)
        self.amp = config.amp

    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys.next_step()
        if self.model.row_training:  # the users' whole rows: the model's own per-user losses
            device_type = users.device.type
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp):
                losses = self.model.row_loss(users, self.keys.taken - 1).float()
            return losses.detach(), losses.mean()
        logits = self.forward(users, items)
        loss = self.loss(logits, labels)
        extra = self.model.penalty(users, items)
        return logits, loss if extra is None else loss + extra


class AutogradStep:
    """Forward, BCE on logits, backward, optimizer step: works for every model.

    With ``optimizer='lazy-adam'`` the embeddings get sparse gradients and ``SparseAdam`` (only
    the rows in the batch move, their moments too), the other parameters dense Adam. With
    ``dense_rows`` the embeddings' gradients stay dense through backward (to be all-reduced) and
    reach ``SparseAdam`` as the rows that have one.
    """

    def __init__(self, model: ScoringModel, config: TrainConfig, dense_rows: bool = False) -> None:
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizers: list[torch.optim.Optimizer]
        self.sparse: list[torch.Tensor] = []  # dense gradients SparseAdam takes as rows
        if config.optimizer == "lazy-adam":
            embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
            for module in embeddings:
                module.sparse = not dense_rows
            if dense_rows:
                self.sparse = [m.weight for m in embeddings]
            sparse_ids = {id(m.weight) for m in embeddings}
            sparse = [p for p in params if id(p) in sparse_ids]
            dense = [p for p in params if id(p) not in sparse_ids]
            self.optimizers = [
                torch.optim.SparseAdam(
                    sparse, lr=config.learning_rate, betas=(config.beta1, config.beta2)
                )
            ]
            if dense:
                self.optimizers.append(make_optimizer(dense, config.replace(optimizer="adam")))
        else:
            self.optimizers = [make_optimizer(params, config)]
        self.forward_loss = ForwardLoss(model, config)

    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits, loss = self.forward_loss(users, items, labels)
        return self._descend(logits, loss)

    def _descend(self, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Backward from ``loss`` and every optimizer's step; the logits, detached."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for param in self.sparse:
            if param.grad is not None:  # the rows with a gradient, as a row-sparse tensor
                param.grad = param.grad.to_sparse(sparse_dim=1)
        for optimizer in self.optimizers:
            optimizer.step()
        return logits.detach()

    def set_learning_rate(self, lr: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": [o.state_dict() for o in self.optimizers],
            "taken": self.forward_loss.keys.taken,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.forward_loss.keys.taken = int(state["taken"])


class DistributedStep(AutogradStep):
    """Autograd on each of several processes, the gradients averaged by PyTorch's
    ``DistributedDataParallel`` (its bucketed all-reduce, overlapped with the backward pass).

    Each rank trains on its share of every global batch (``distributed.World.span``); its loss
    is its share's sum over the global batch's size, times the ranks (DDP averages), so the
    averaged gradient is the global batch's mean gradient and N ranks take the steps one process
    takes with the same global batch, up to floating-point summation order (tested). The dropout
    masks are keyed by the share's first row in the global batch, so they do not depend on N.
    The compiled kernels update parameters outside autograd; on several ranks every neural model
    trains through this step, with ``torch.optim``'s optimizers. Lazy Adam's embedding
    gradients are all-reduced dense (gloo has no sparse all-reduce under DDP) and handed to
    ``SparseAdam`` as the rows the global batch moved.
    """

    def __init__(self, model: ScoringModel, config: TrainConfig, world: World) -> None:
        super().__init__(model, config, dense_rows=True)  # (lazy Adam: dense through DDP)
        from torch.nn.parallel import DistributedDataParallel

        self.world = world
        device = next(model.parameters()).device
        devices = None if device.type == "cpu" else [device]
        self.ddp = DistributedDataParallel(model, device_ids=devices)
        self.forward_loss.forward = _forward(self.ddp, config)  # type: ignore[arg-type]

    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """One step of the global batch: this rank trains on its share (rows ``lo … hi - 1``)
        and returns that share's logits."""
        lo, hi = self.world.span(len(users))
        self.forward_loss.keys.next_step(lo)
        logits = self.forward_loss.forward(users[lo:hi], items[lo:hi])
        if hi > lo:
            share = (hi - lo) * self.world.size / len(users)
            loss = self.forward_loss.loss(logits, labels[lo:hi]) * share
        else:  # an empty share still takes part in the all-reduce
            loss = logits.sum() * 0.0
        return self._descend(logits, loss)


class FlatAdam:
    """Exact Adam (``torch.optim.Adam``'s formula, L2 via ``weight_decay``) over one flat buffer.

    Every trainable parameter of ``model`` becomes a view of ``self.flat`` and its gradient a view
    of ``self.grad``, so the whole update is one fused kernel instead of one per tensor.
    """

    def __init__(
        self,
        model: ScoringModel,
        config: TrainConfig,
        params: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        trainable = [p for p in model.parameters() if p.requires_grad]
        if params is None:
            params = trainable
        elif {id(p) for p in params} != {id(p) for p in trainable}:
            raise ConfigError(f"{model.name}'s declared layout misses some of its parameters")
        self.params = list(params)
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.grad = torch.zeros_like(self.flat)
        self.views, self.grads, offset = [], [], 0
        for p in self.params:
            n = p.numel()
            self.views.append(self.flat[offset : offset + n].view_as(p))
            self.grads.append(self.grad[offset : offset + n].view_as(p))
            offset += n
        for p, view in zip(self.params, self.views, strict=True):
            p.data = view  # the module now reads and writes the flat buffer
        self.lr = config.learning_rate
        self.weight_decay = config.weight_decay
        self.beta1, self.beta2, self.eps = config.beta1, config.beta2, 1e-8
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.steps = torch.zeros((), dtype=torch.float32, device=self.flat.device)
        self._fused = hasattr(torch, "_fused_adam_") and self.flat.device.type in ("cpu", "cuda")

    def _adam_update(self) -> None:
        self.steps += 1  # torch.optim.Adam also counts the step before the fused kernel
        if self._fused:
            torch._fused_adam_(
                [self.flat],
                [self.grad],
                [self.exp_avg],
                [self.exp_avg_sq],
                [],
                [self.steps],
                lr=self.lr,
                beta1=self.beta1,
                beta2=self.beta2,
                weight_decay=self.weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        # the same formula as torch.optim.Adam's single-tensor path
        step = float(self.steps)
        grad = self.grad.add(self.flat, alpha=self.weight_decay) if self.weight_decay else self.grad
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias1 = 1 - self.beta1**step
        bias2_sqrt = math.sqrt(1 - self.beta2**step)
        denom = (self.exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, denom, value=-self.lr / bias1)

    def set_learning_rate(self, lr: float) -> None:
        self.lr = lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "steps": self.steps.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.steps.copy_(state["steps"])


class FlatAdamStep(FlatAdam):
    """Autograd for any model, with Adam fused over one flat buffer.

    Embeddings produce sparse row gradients that are added into the (dense, zeroed) flat
    gradient, so no full-table gradient is allocated per step; the update stays dense Adam over
    every parameter, exactly ``torch.optim.Adam``.
    """

    def __init__(self, model: ScoringModel, config: TrainConfig) -> None:
        super().__init__(model, config)
        sparse_ids = set()
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.sparse = True
                sparse_ids.add(id(module.weight))
        # dense parameters accumulate straight into their views of the flat gradient; the sparse
        # row gradients of embeddings are scattered there by hand (torch adds sparse into dense
        # row by row on a CPU)
        self.sparse: list[tuple[torch.Tensor, torch.Tensor]] = []
        for p, grad in zip(self.params, self.grads, strict=True):
            if id(p) in sparse_ids:
                self.sparse.append((p, grad))
            else:
                p.grad = grad
        self.forward_loss = ForwardLoss(model, config)

    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits, loss = self.forward_loss(users, items, labels)
        self.grad.zero_()
        loss.backward()
        with torch.no_grad():
            for p, grad in self.sparse:
                rows = p.grad
                if rows is None:
                    continue
                if rows.is_sparse:
                    grad.index_add_(0, rows._indices()[0], rows._values())
                else:  # the whole table took part (a graph model propagates every row)
                    grad.add_(rows)
                p.grad = None
            self._adam_update()
        return logits.detach()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.forward_loss.keys.taken = int(self.steps)  # the dropout keys count Adam's steps


class DotProductAdamStep(FlatAdam):
    """Exact BCE + Adam for ``MF`` (``Σ p⊙q``) and ``GMF`` (``hᵀ(p⊙q) + b``) without autograd.

    With ``x = p_u ⊙ q_i``, logit ``z``, batch size ``B`` and ``g = (σ(z) − y) / B``:
    ``∂L/∂p_u = g·(w ⊙ q_i)``, ``∂L/∂q_i = g·(w ⊙ p_u)`` (``w = h`` for GMF, 1 for MF),
    ``∂L/∂h = Σ g x``, ``∂L/∂b = Σ g``, then Adam over the flat buffer.
    """

    def __init__(self, model: ScoringModel, config: TrainConfig) -> None:
        layout = model.kernel_layout()
        if not isinstance(layout, DotLayout):
            raise ConfigError(
                f"the analytic step supports mf and gmf without biases, not {model.name}"
            )
        # the flat buffer in the layout's order: user table, item table, (head weight, bias);
        # users' and items' rows are adjacent: one table, one gather, one scatter
        super().__init__(model, config, layout.parameters())
        self.has_head = layout.head is not None
        self.num_users, self.dim = layout.user_table.shape
        self.num_rows = self.num_users + len(layout.item_table)
        size = self.num_rows * self.dim
        self.table = self.flat[:size].view(self.num_rows, self.dim)
        self.table_grad = self.grad[:size].view(self.num_rows, self.dim)
        if self.has_head:
            self.h, self.b = self.views[2][0], self.views[3]
            self.head_grad = self.grad[size:]  # [∂h..., ∂b]

    @torch.no_grad()
    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        n = len(users)
        shifted = items + self.num_users
        order = torch.cat([users, shifted, users])
        rows = self.table.index_select(0, order[: 2 * n]).view(2, n, -1)  # [p_u; q_i]
        x = rows[0] * rows[1]
        logits = torch.addmv(self.b, x, self.h) if self.has_head else x.sum(1)
        g = torch.sigmoid(logits).sub_(labels).div_(n)
        self.table_grad.zero_()
        if self.has_head:
            torch.cat([x.T @ g, g.sum().reshape(1)], out=self.head_grad)
            coef = g[:, None] * self.h
        else:
            coef = g[:, None]
        # ∂q_i = coef ⊙ p_u and ∂p_u = coef ⊙ q_i: scatter [p_u; q_i]·coef to [items; users]
        self.table_grad.index_add_(0, order[n:], rows.mul(coef).view(2 * n, -1))
        self._adam_update()
        return logits


class CompiledSteps:
    """What the compiled kernels' steps share: one call per batch is ``run`` on that batch, and
    the kernels keep ``sqrt(exp_avg_sq)`` (a square root less per parameter and step) while
    ``state_dict`` / ``load_state_dict`` speak Adam's usual moments."""

    exp_avg_sq: torch.Tensor
    kernel: Any

    flat: torch.Tensor
    grad: torch.Tensor
    exp_avg: torch.Tensor
    steps: torch.Tensor
    batch_size: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float

    def run(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int | None = None,
        order: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> float:
        """Train on ``users[order], items[order], labels[order]`` (default order: as given) in
        consecutive batches of ``batch_size`` (default: the config's), in one call.

        Returns the summed BCE loss of these samples, each taken before its batch's update;
        with ``logits`` (one per sample) given, ``logits[order[k]]`` receives sample
        ``order[k]``'s logit.
        """
        if order is None:
            order = torch.arange(len(users))
        k = self.kernel
        buffers = k.Buffers(
            flat=self.flat,
            grad=self.grad,
            exp_avg=self.exp_avg,
            exp_avg_sqrt=self.exp_avg_sq,
            steps=self.steps,
        )
        batches = k.Batches(
            users=users.contiguous(),
            items=items.contiguous(),
            labels=labels.float().contiguous(),
            order=order.contiguous(),
            logits=torch.empty(0) if logits is None else logits,
            batch_size=batch_size or self.batch_size,
        )
        adam = k.AdamSettings(
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            weight_decay=self.weight_decay,
        )
        return self._launch(buffers, batches, adam)

    def _launch(self, buffers: Any, batches: Any, adam: Any) -> float:
        raise NotImplementedError

    def __call__(
        self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits = torch.empty(len(users))
        self.run(users, items, labels, batch_size=len(users), logits=logits)
        return logits

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # type: ignore[misc]
        state["exp_avg_sq"] = state["exp_avg_sq"].square()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)  # type: ignore[misc]
        self.exp_avg_sq.sqrt_()


class NativeDotProductAdamStep(CompiledSteps, DotProductAdamStep):
    """``DotProductAdamStep`` as one compiled C++ kernel (``torchcf.native``) for many batches.

    Same formula, same parameter buffers; a whole run of batches is one call (no per-op
    dispatch, no Python per batch, the GIL released), with the dense Adam split over torch's
    threads. Built on first use; ``make_step`` falls back to the tensor-op step without it.
    The kernel keeps ``sqrt(exp_avg_sq)`` in ``exp_avg_sq`` (a square root less per parameter
    and step); ``state_dict`` and ``load_state_dict`` speak Adam's usual moments.
    """

    def __init__(self, model: ScoringModel, config: TrainConfig, kernel: Any) -> None:
        super().__init__(model, config)
        if self.flat.device.type != "cpu":
            raise ConfigError("the compiled MF/GMF kernel runs on the CPU")
        self.kernel = kernel
        self.batch_size = config.batch_size
        self.shape = kernel.DotShape(
            num_users=self.num_users, num_rows=self.num_rows, dim=self.dim, has_head=self.has_head
        )

    def _launch(self, buffers: Any, batches: Any, adam: Any) -> float:
        return float(self.kernel.dot_adam_batches(buffers, batches, self.shape, adam))


class TowerOptimizer(enum.IntEnum):
    """The optimizers of the compiled MLP/NeuMF kernel, as its ``Optimizer`` enum names them
    (``csrc/adam.h``; a test checks that the two agree)."""

    ADAM = 0
    LAZY_ADAM = 1
    SGD = 2

    @classmethod
    def named(cls, name: str) -> TowerOptimizer | None:
        """The kernel's code of optimizer ``name`` (``lazy-adam``), or None if it has none."""
        return cls.__members__.get(name.upper().replace("-", "_"))


class NativeTowerAdamStep(CompiledSteps, FlatAdam):
    """BCE + Adam for ``MLP`` and ``NeuMF`` as one compiled C++ kernel (``csrc/tower_adam.cpp``).

    The forward pass, the chain rule written out by hand (the tower's products through torch's
    BLAS) and Adam over the flat buffer, many batches a call with the GIL released. Dense Adam
    (``optimizer='adam'``) is ``torch.optim.Adam`` exactly (tested); ``'lazy-adam'`` moves only
    the embedding rows each batch touched (``torch.optim.SparseAdam``'s rule; tower and head
    dense); ``'sgd'`` is ``torch.optim.SGD`` without momentum (NeuMF's fine-tuning). Dropout
    masks come from a counter-based generator keyed by (seed, Adam step, layer),
    so they repeat on a resumed run and do not depend on threads or call sizes. With ``amp``
    the tower's matrix products and activations are bfloat16 (as under autocast; the head, the
    sums and Adam stay float): ~1.4x faster epochs where the CPU multiplies bfloat16 in hardware.
    """

    def __init__(self, model: ScoringModel, config: TrainConfig, kernel: Any) -> None:
        layout = model.kernel_layout()
        optimizer = TowerOptimizer.named(config.optimizer)
        if not isinstance(layout, TowerLayout) or optimizer is None:
            raise ConfigError(f"the tower kernel does not train {model.name}/{config.optimizer}")
        super().__init__(model, config, layout.parameters())
        if self.flat.device.type != "cpu":
            raise ConfigError("the compiled MLP/NeuMF kernel runs on the CPU")
        self.kernel = kernel
        self.shape = kernel.TowerShape(
            num_users=model.num_users,
            num_items=model.num_items,
            gmf_dim=layout.gmf_dim,
            width=layout.width,
            layer_widths=layout.layer_widths,
        )
        self.optimizer = optimizer
        self.amp = config.amp  # bfloat16 products
        self.kernel_optimizer = getattr(kernel.Optimizer, optimizer.name.lower())
        self.batch_size = config.batch_size
        self.seed = config.seed
        # the model's own dropout layers' rounded probability and scale (all alike)
        drop = layout.dropout
        self.dropout = kernel.DropoutSettings(
            threshold=0 if drop is None else drop.threshold,
            scale=1.0 if drop is None else drop.scale,
            seed=config.seed,
        )

    def _launch(self, buffers: Any, batches: Any, adam: Any) -> float:
        return float(
            self.kernel.tower_adam_batches(
                buffers, batches, self.shape, self.kernel_optimizer, adam, self.dropout, self.amp
            )
        )


def _kernel_ok(model: ScoringModel, config: TrainConfig) -> bool:
    """Does a compiled step train ``model`` with ``config``? The model declares a layout; the
    kernels compute BCE, the tower kernel on a CPU with its optimizers (``amp``: bfloat16
    products), the MF/GMF step dense Adam without autocast."""
    layout = model.kernel_layout()
    if layout is None or config.loss != "bce":
        return False
    if isinstance(layout, TowerLayout):
        cpu = next(model.parameters()).device.type == "cpu"
        return cpu and TowerOptimizer.named(config.optimizer) is not None
    return config.optimizer == "adam" and not config.amp


def make_step(model: ScoringModel, config: TrainConfig, world: World | None = None) -> TrainStep:
    """The fastest step for ``model`` and ``config``.

    On several ranks (``world``, torchrun): ``DistributedStep``, autograd under DDP (the compiled
    kernels update parameters outside autograd).

    Where the model declares a kernel layout (``ScoringModel.kernel_layout``) and the settings
    suit it: the compiled MF/GMF kernel (dense Adam; its tensor-op form on a GPU or without a
    compiler) or the compiled MLP/NeuMF kernel (Adam, lazy Adam or SGD on a CPU). Else autograd:
    with Adam fused over one flat buffer, or ``torch.optim`` for other optimizers;
    ``step='autograd'`` forces plain autograd + ``torch.optim``.
    """
    if world is not None and world.size > 1:
        return DistributedStep(model, config, world)
    layout = model.kernel_layout()
    ok = _kernel_ok(model, config)
    if config.step == "analytic" and not ok:
        raise ConfigError(
            f"--step analytic supports mf and gmf (no biases) with adam and no --amp, and mlp "
            f"and neumf on a cpu with adam, lazy-adam or sgd, all with bce; not {model.name} "
            f"with {config.optimizer} and {config.loss}"
        )
    if config.step == "autograd" or not ok:
        if config.step == "autograd" or config.optimizer != "adam":
            return AutogradStep(model, config)
        return FlatAdamStep(model, config)
    cpu = next(model.parameters()).device.type == "cpu"
    kernel = native.load() if cpu else None
    if isinstance(layout, TowerLayout):
        if kernel is not None:
            return NativeTowerAdamStep(model, config, kernel)
        return (
            FlatAdamStep(model, config)
            if config.optimizer == "adam"
            else AutogradStep(model, config)
        )
    if kernel is not None:
        return NativeDotProductAdamStep(model, config, kernel)
    return DotProductAdamStep(model, config)
