"""bertjax.kernels: which kernel set and compute dtype a host gets, and forcing them."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from bertjax import kernels, models
from bertjax.kernels import cpu_features


def _cpuinfo(tmp_path, flags: str) -> frozenset[str]:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test cpu\nflags\t\t: fpu sse2 {flags}\n\n")
    cpu_features.cpu_flags.cache_clear()
    try:
        return cpu_features.cpu_flags(str(path))
    finally:
        cpu_features.cpu_flags.cache_clear()


@pytest.mark.parametrize(
    "flags, units, dtype",
    [
        ("avx2 fma", (), "float32"),  # this project's EPYC
        ("avx512f avx512_bf16", ("avx512_bf16",), "float32"),  # bf16 lost here (issue 14)
        ("avx512_bf16 amx_tile amx_bf16", ("amx_bf16", "avx512_bf16"), "bfloat16"),
    ],
)
def test_cpu_flags_pick_the_compute_dtype(tmp_path, flags, units, dtype):
    found = _cpuinfo(tmp_path, flags)
    assert cpu_features.bf16_matmul_units(found) == units
    assert cpu_features.preferred_compute_dtype("cpu", found) == dtype
    assert cpu_features.preferred_compute_dtype("gpu", found) == "bfloat16"


def test_unreadable_cpuinfo_means_no_flags(tmp_path):
    assert cpu_features.cpu_flags.__wrapped__(str(tmp_path / "missing")) == frozenset()


def test_kernel_sets_resolve_and_can_be_forced():
    # The tests run on the CPU backend.
    assert kernels.resolve("auto") == "cpu_bf16"
    assert kernels.resolve("xla") == "xla"
    assert kernels.canonical_matmuls("auto", jnp.bfloat16)
    assert not kernels.canonical_matmuls("auto", jnp.float32)  # XLA's f32 dots are fast
    assert kernels.canonical_matmuls("cpu_bf16", jnp.float32)  # forced
    assert not kernels.canonical_matmuls("xla", jnp.bfloat16)
    with pytest.raises(ValueError, match="kernels='fast'"):
        kernels.resolve("fast")


def test_model_config_takes_kernels_and_auto_dtype():
    cfg = models.get_config("tiny", dtype="auto", kernels="xla")
    expected = cpu_features.preferred_compute_dtype("cpu")
    assert cfg.compute_dtype == jnp.dtype(expected)
    assert models.ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="ModelConfig.kernels='gpu_fast'"):
        models.get_config("tiny", kernels="gpu_fast")
