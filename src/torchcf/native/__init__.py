"""The compiled kernels (``csrc/``: MF/GMF and MLP/NeuMF training steps, iALS conjugate-gradient
sweeps, the CSR × dense product of LightGCN's propagation), built on first use.

``torch.utils.cpp_extension`` compiles it with the machine's C++ compiler (tuned for this CPU)
into torch's extension cache, so later runs load it in well under a second. Where it cannot be
built (no compiler, another platform) ``load()`` returns None and torchcf uses the same exact step
written as PyTorch tensor ops instead (``torchcf.training.steps``), several times slower.
``TORCHCF_NATIVE=0`` turns the kernel off.

``bf16_products()`` says whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX):
where it does, the towers' fast recipes take their matrix products in bfloat16 (``--amp``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["bf16_products", "build_error", "load"]

_CSRC = Path(__file__).with_name("csrc")
_SOURCE = _CSRC / "module.cpp"  # includes the kernels: one translation unit
_PARTS = [
    _CSRC / name
    for name in (
        "module.cpp",
        "adam.h",
        "dot_adam.cpp",
        "ials_cg.cpp",
        "spmm.cpp",
        "tower_adam.cpp",
    )
]
_module: ModuleType | None = None
_tried = False
_error: str | None = None


def _cpu_tag() -> str:
    """A short tag of this CPU's instruction sets: the build uses ``-march=native``, so a cache
    shared between machines must not hand one CPU's binary to another."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    digest = hashlib.sha1(f"{platform.machine()} {flags}".encode()).hexdigest()
    return digest[:10]


def load(verbose: bool = False) -> ModuleType | None:
    """The compiled kernel module, or None where it is turned off or cannot be built."""
    global _module, _tried, _error
    if _tried:
        return _module
    _tried = True
    if os.environ.get("TORCHCF_NATIVE", "1") == "0" or platform.system() != "Linux":
        _error = "turned off (TORCHCF_NATIVE=0)" if platform.system() == "Linux" else "not Linux"
        return None
    try:
        from torch.utils import cpp_extension

        digest = hashlib.sha1()
        for path in _PARTS:
            digest.update(path.read_bytes())
        _module = cpp_extension.load(
            name=f"torchcf_kernels_{digest.hexdigest()[:8]}_{_cpu_tag()}",
            sources=[str(_SOURCE)],
            extra_include_paths=[str(_CSRC)],
            extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=verbose,
        )
    except Exception as exc:  # no compiler, no headers, no ninja: fall back to tensor ops
        _error = _build_error(exc)
        warnings.warn(
            f"torchcf: the compiled training kernels are unavailable ({_error}); using the "
            "slower tensor-op step",
            RuntimeWarning,
            stacklevel=2,
        )
        _module = None
    return _module


def _build_error(exc: Exception) -> str:
    """The build's failure in one line: what failed and the compiler's (or shell's) own first
    error, not the command line ninja echoes before it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    head = lines[0].split(": [", 1)[0] if lines else ""
    detail = next(
        (
            line
            for line in lines[1:]
            if re.search(r"error|not found|no such file", line, re.IGNORECASE)
            and not line.startswith(("FAILED", "ninja: build stopped"))
        ),
        None,
    )
    return f"{type(exc).__name__}: {head}" + (f": {detail[:300]}" if detail else "")


def build_error() -> str | None:
    """Why ``load()`` returned None (the build's own error), or None if it did not."""
    load()
    return _error


def bf16_products() -> bool:
    """Does this CPU multiply bfloat16 matrices in hardware (AVX512-BF16 or AMX tiles)? Where it
    does not, bfloat16 products are emulated and slower than float's."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # another torch: no such checks
        return False
