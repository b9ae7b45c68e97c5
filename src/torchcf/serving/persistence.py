"""A trained model as data: a directory with JSON config, tensor weights and id maps.

Layout (written atomically as a whole directory)::

    model/config.json   format, versions, model name, sizes, hyperparameters, training config,
                        dataset, protocol and metrics
    model/weights.pt    the state dict, loaded with ``torch.load(..., weights_only=True)``
    model/user_ids.json, model/item_ids.json   external ids in dense-index order
    model/seen.npz      the training interactions as CSR (``indptr``, ``indices``) for exclude-seen

Loading never unpickles code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

import torchcf
from torchcf.data.interactions import IdMap, Interactions
from torchcf.data.split import Split
from torchcf.errors import DataError
from torchcf.io import atomic_directory
from torchcf.models.base import ScoringModel
from torchcf.models.registry import MODELS, restore

__all__ = ["LoadedModel", "load_model", "model_directory", "save_model"]

FORMAT = "torchcf-model"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A model with everything needed to turn its scores into recommendations."""

    model: ScoringModel
    user_map: IdMap
    item_map: IdMap
    seen: sp.csr_matrix
    metadata: dict[str, Any]

    def trained_on(self, split: Split) -> bool:
        """Was the model trained on ``split``'s training set (same ids, sizes and pairs)?"""
        same_ids = split.train.user_map is None or (
            self.user_map == split.train.user_map and self.item_map == split.train.item_map
        )
        sizes = (self.model.num_users, self.model.num_items) == (split.num_users, split.num_items)
        return same_ids and sizes and self.seen.nnz == len(split.train.deduplicate())


def save_model(
    path: str | Path,
    model: ScoringModel,
    train: Interactions,
    metadata: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (or ``state`` loaded into its architecture) to the directory ``path``."""
    path = Path(path)
    user_map = train.user_map or IdMap.identity(train.num_users)
    item_map = train.item_map or IdMap.identity(train.num_items)
    weights = {k: v.detach().cpu().clone() for k, v in (state or model.state_dict()).items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torchcf_version": torchcf.__version__,
        "torch_version": torch.__version__,
        "model": model.name,
        "num_users": model.num_users,
        "num_items": model.num_items,
        "hparams": model.hparams(),
        **(metadata or {}),
    }
    csr = train.csr
    with atomic_directory(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        torch.save(weights, tmp / "weights.pt")
        user_map.save(tmp / "user_ids.json")
        item_map.save(tmp / "item_ids.json")
        np.savez_compressed(
            tmp / "seen.npz",
            indptr=csr.indptr.astype(np.int64),
            indices=csr.indices.astype(np.int32),
            shape=np.array(csr.shape, dtype=np.int64),
        )
    return path


def model_directory(path: str | Path) -> Path:
    """The model directory of ``path``: ``path/model`` for a run directory, else ``path``."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").exists() else path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory written by ``save_model``; ``DataError`` if it is not one."""
    path = model_directory(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise DataError(f"{path} is not a torchcf model directory (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{config_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if config.get("format") != FORMAT:
        raise DataError(f"{config_path}: not a torchcf model (format {config.get('format')!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(
            f"{config_path}: made by a newer torchcf (format {config['format_version']})"
        )
    name = config["model"]
    if name not in MODELS:
        raise DataError(f"{config_path}: unknown model {name!r}")
    try:
        model = restore(name, config["num_users"], config["num_items"], config["hparams"])
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        user_map = IdMap.load(path / "user_ids.json")
        item_map = IdMap.load(path / "item_ids.json")
        seen_npz = np.load(path / "seen.npz")
        seen = sp.csr_matrix(
            (
                np.ones(len(seen_npz["indices"]), dtype=np.float32),
                seen_npz["indices"],
                seen_npz["indptr"],
            ),
            shape=tuple(seen_npz["shape"]),
        )
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: damaged model directory ({type(exc).__name__}: {exc})") from None
    model.to(device).eval()
    return LoadedModel(model, user_map, item_map, seen, config)
