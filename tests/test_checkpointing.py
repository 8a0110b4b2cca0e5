"""Orbax checkpoints: sharded round trip with the data position, retention, atomicity, best."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bertjax import checkpointing, sharding


def _state(mesh, scale: float = 1.0):
    w = NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))
    rep = sharding.replicated(mesh)
    return {
        "step": jax.device_put(jnp.int32(7), rep),
        "params": {"w": jax.device_put(scale * jnp.arange(32.0).reshape(8, 4), w)},
        "opt_state": ({"mu": jax.device_put(jnp.ones((8, 4)), w)},),
        "rng": jax.device_put(jax.random.PRNGKey(3), rep),
    }


def _abstract(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def test_round_trip_keeps_values_shardings_and_data_position(tmp_path):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state = _state(mesh)
    ckpt = checkpointing.Checkpointer(tmp_path, keep=3)
    ckpt.save(7, state, {"epoch": 1, "index": 40, "fingerprint": "abc"})
    ckpt.wait()
    assert ckpt.latest_step() == 7
    restored, data_state = ckpt.restore(7, _abstract(state))
    assert data_state == {"epoch": 1, "index": 40, "fingerprint": "abc"}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    # Each host writes its own data position.
    assert (tmp_path / "checkpoints" / "7" / "data" / "process_0-of-1.json").is_file()
    ckpt.close()


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    """`--workdir=runs/x` (the quickstart's): Orbax refuses relative paths, so they are resolved."""
    monkeypatch.chdir(tmp_path)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state = _state(mesh)
    ckpt = checkpointing.Checkpointer("runs/x", keep=1)
    ckpt.save(3, state, {"epoch": 0})
    ckpt.wait()
    restored, _ = ckpt.restore(3, _abstract(state))
    ckpt.close()
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(restored)[0]), np.asarray(jax.tree.leaves(state)[0])
    )
    best = checkpointing.BestCheckpointer("runs/x", "eval/accuracy", "max")
    assert best.maybe_save(3, state["params"], {"eval/accuracy": 0.5})
    best.close()
    assert (tmp_path / "runs" / "x" / "checkpoints" / "3").is_dir()
    assert jax.tree.leaves(checkpointing.restore_params("runs/x"))


def test_restore_onto_another_mesh(tmp_path):
    mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    ckpt = checkpointing.Checkpointer(tmp_path, keep=1)
    ckpt.save(1, _state(mesh8), {})
    ckpt.close()
    mesh1 = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    target = _state(mesh1)
    restored, _ = checkpointing.Checkpointer(tmp_path, keep=1).restore(1, _abstract(target))
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(32.0).reshape(8, 4))
    assert restored["params"]["w"].sharding.mesh.size == 1


def test_keeps_the_last_k_and_ignores_unfinished_saves(tmp_path):
    mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        ckpt.save(step, _state(mesh, float(step)), {"index": step})
    ckpt.close()
    # What a save killed midway leaves: a temporary directory Orbax never renamed.
    leftover = tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-123"
    (leftover / "state").mkdir(parents=True)
    reopened = checkpointing.Checkpointer(tmp_path, keep=2)
    assert reopened.all_steps() == [3, 4]
    assert reopened.latest_step() == 4
    state, data_state = reopened.restore(4, _abstract(_state(mesh)))
    assert data_state == {"index": 4}
    np.testing.assert_array_equal(state["params"]["w"], 4.0 * np.arange(32.0).reshape(8, 4))
    reopened.close()
    assert not leftover.exists()  # cleaned up (in the background) on start-up


def test_best_checkpointer_keeps_the_best_and_remembers_it(tmp_path):
    mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    best = checkpointing.BestCheckpointer(tmp_path, "eval/accuracy", "max")
    assert best.maybe_save(1, _state(mesh, 1.0)["params"], {"eval/accuracy": 0.5})
    assert best.maybe_save(2, _state(mesh, 2.0)["params"], {"eval/accuracy": 0.7})
    assert not best.maybe_save(3, _state(mesh, 3.0)["params"], {"eval/accuracy": 0.6})
    with pytest.raises(KeyError, match="'eval/accuracy' is not among"):
        best.maybe_save(4, {}, {"eval/loss": 1.0})
    best.close()
    again = checkpointing.BestCheckpointer(tmp_path, "eval/accuracy", "max")
    assert (again.best_step, again.best_value) == (2, pytest.approx(0.7))
    again.close()
    # A run directory with a best checkpoint gives the best params.
    params = checkpointing.restore_params(tmp_path)
    np.testing.assert_array_equal(params["w"], 2.0 * np.arange(32.0).reshape(8, 4))
    assert isinstance(params["w"], np.ndarray)


def test_restore_params_from_a_training_run(tmp_path):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
    ckpt.save(3, _state(mesh, 3.0), {})
    ckpt.save(5, _state(mesh, 5.0), {})
    ckpt.close()
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "5"):
        params = checkpointing.restore_params(path)
        np.testing.assert_array_equal(params["w"], 5.0 * np.arange(32.0).reshape(8, 4))
    params = checkpointing.restore_params(tmp_path / "checkpoints" / "3")
    np.testing.assert_array_equal(params["w"], 3.0 * np.arange(32.0).reshape(8, 4))
    with pytest.raises(FileNotFoundError, match="not a bertjax workdir"):
        checkpointing.restore_params(tmp_path / "nothing_here")
