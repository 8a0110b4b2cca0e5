"""What this host's CPU can do for bfloat16 matmuls, read once from /proc/cpuinfo.

XLA:CPU (jax 0.10) runs a canonical-layout bf16 x bf16 -> f32 dot on YNNPACK, which uses AMX
tiles or AVX512-BF16 instructions where the CPU has them; without them bf16 is converted to
float32 around every op and only costs time. Measured: on a CPU with AVX512-BF16 but no AMX
the bert_cpu pretraining step ran 0.961 steps/s in bf16 against 1.085 in float32 (issue 14),
on a 2-core Sapphire Rapids (AMX) bf16 won; on an AVX2-only EPYC float32 is the only fast
path. So bf16 is the preferred compute dtype on a CPU only with AMX-BF16.
"""

from __future__ import annotations

import functools
import pathlib

BF16_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16")  # best first


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The `flags` of the first processor in `cpuinfo` (empty where the file is unreadable)."""
    try:
        text = pathlib.Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_matmul_units(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The bf16 matmul instruction sets of this CPU ("amx_bf16", "avx512_bf16"), best first."""
    flags = cpu_flags() if flags is None else flags
    return tuple(f for f in BF16_MATMUL_FLAGS if f in flags)


def preferred_compute_dtype(backend: str, flags: frozenset[str] | None = None) -> str:
    """The compute dtype a model runs fastest in on `backend` ("cpu", "gpu", "tpu").

    Accelerators: bfloat16. A CPU: bfloat16 only with AMX-BF16 (see the module docstring:
    AVX512-BF16 alone loses to float32), else float32.
    """
    if backend != "cpu":
        return "bfloat16"
    return "bfloat16" if "amx_bf16" in bf16_matmul_units(flags) else "float32"
