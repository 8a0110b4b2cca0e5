"""Mesh construction, logical rules, batch checks and the host batch -> global array step."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from bertjax import config_lib, sharding


def test_mesh_shape_fills_minus_one():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 8) == (1, 8, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


@pytest.mark.parametrize(
    "mesh, match",
    [
        ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one -1"),
        ({"data": 0, "fsdp": 1, "tensor": 1}, "positive"),
        ({"data": -1, "fsdp": 3, "tensor": 1}, "not divisible by 3"),
        ({"data": 2, "fsdp": 2, "tensor": 1}, "has 4 devices, not 8"),
    ],
)
def test_mesh_shape_errors_name_the_keys(mesh, match):
    with pytest.raises(ValueError, match=match) as e:
        sharding.mesh_shape(mesh, 8)
    assert "config.mesh.data" in str(e.value)


def test_make_mesh_uses_auto_axes_and_all_devices():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert mesh.size == len(jax.devices()) == 8


def test_logical_rules_override_by_name():
    config = config_lib.load("configs/bert_tiny_pretrain.py")
    assert dict(sharding.logical_rules(config)) == dict(sharding.DEFAULT_RULES)
    config.unlock()
    config.logical_axis_rules = [("embed", None), ("act_length", "tensor")]
    rules = dict(sharding.logical_rules(config))
    assert rules["embed"] is None and rules["act_length"] == "tensor"
    assert rules["mlp"] == "tensor"  # untouched entries stay
    config.logical_axis_rules = [("embed", "pipeline")]
    with pytest.raises(ValueError, match="unknown mesh axis 'pipeline'"):
        sharding.logical_rules(config)


def test_batch_size_that_the_mesh_cannot_divide_names_both():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharding.check_batch_size(8, mesh)
    with pytest.raises(ValueError) as e:
        sharding.check_batch_size(6, mesh)
    assert "config.batch_size=6" in str(e.value) and "= 4" in str(e.value)
    # With accumulation, each microbatch must split over the mesh.
    with pytest.raises(ValueError, match="microbatch .* = 4 is not divisible"):
        sharding.check_batch_size(8, sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1}), 2)
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        sharding.check_batch_size(8, mesh, 3)


def test_global_batch_places_rows_on_the_batch_axes():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    local = {"input_ids": np.arange(8 * 3, dtype=np.int32).reshape(8, 3)}
    batch = sharding.global_batch(local, mesh, 8)
    arr = batch["input_ids"]
    assert arr.shape == (8, 3)
    assert arr.sharding.spec == PartitionSpec(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(arr), local["input_ids"])
    # 4-way split of the rows, replicated over tensor: every shard holds 2 rows.
    assert {s.data.shape for s in arr.addressable_shards} == {(2, 3)}
    with pytest.raises(ValueError, match="this host gave 8 rows, expected 16"):
        sharding.global_batch(local, mesh, 16)


def test_uneven_parameter_split_is_an_error_naming_the_array():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    tree = {"emb": jax.ShapeDtypeStruct((3239, 128), np.float32)}
    shards = {"emb": NamedSharding(mesh, PartitionSpec("tensor", "fsdp"))}
    with pytest.raises(
        ValueError, match=r"\['emb'\] of shape \(3239, 128\).*3239 is not divisible"
    ):
        sharding.check_divisible(tree, shards)
    sharding.check_divisible({"emb": jax.ShapeDtypeStruct((3328, 128), np.float32)}, shards)
