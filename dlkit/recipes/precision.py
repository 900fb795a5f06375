"""Precision: which number format a training computes in, and what `auto` means on this machine.

Pure Python on purpose (no TensorFlow): a comparison resolves `auto` when it
plans its runs, so the resolved value is what is logged and hashed.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

# CPU flags of native bfloat16 arithmetic (Linux /proc/cpuinfo names).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_precision(precision: str) -> str:
    """Returns the concrete precision a recipe's `precision` means here.

    `auto` is `mixed_bfloat16` where the hardware multiplies bfloat16
    natively (a GPU of compute capability 8.0 or more, or a CPU with AMX-BF16
    or AVX512-BF16), `mixed_float16` on older GPUs (with loss scaling), and
    `float32` everywhere else: emulated bfloat16 would only be slower.
    Other values are returned as they are.
    """
    if precision != "auto":
        return precision
    capability = gpu_compute_capability()
    if capability is not None:
        return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    return "mixed_bfloat16" if cpu_has_native_bf16() else "float32"


@functools.lru_cache(maxsize=4)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 natively (read from `cpuinfo`; False without it)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(set(line.split(":", 1)[1].split()) & set(BF16_CPU_FLAGS))
    return False


@functools.lru_cache(maxsize=1)
def gpu_compute_capability() -> tuple[int, int] | None:
    """The lowest compute capability of this machine's NVIDIA GPUs, or None without one.

    Asked of `nvidia-smi`, so that planning a comparison needs no TensorFlow.
    """
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    capabilities = []
    for line in out.split():
        major, _, minor = line.strip().partition(".")
        if major.isdigit() and minor.isdigit():
            capabilities.append((int(major), int(minor)))
    return min(capabilities) if capabilities else None
