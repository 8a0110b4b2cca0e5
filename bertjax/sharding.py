"""Device mesh, logical-axis rules, and the host batch -> global `jax.Array` step.

The mesh has three named axes:

* ``data``   - pure data parallelism: params replicated, batch split;
* ``fsdp``   - data parallelism with parameters (and optimizer state) split along ``embed``
  (ZeRO-3 / fully-sharded data parallel): the batch is split over ``data`` *and* ``fsdp``;
* ``tensor`` - Megatron-style tensor parallelism: ``mlp`` and ``heads`` split (and the
  vocabulary dimension of the logits).

Models name logical axes only (see docs/architecture.md); `DEFAULT_RULES` maps them onto the
mesh, and ``config.logical_axis_rules`` (a sequence of ``(logical, mesh_axes)`` pairs) overrides
entries by logical name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes the batch dimension is split over

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    # Activations.
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # Parameters. The vocabulary axis is not split by default: with the word-embedding table
    # split over two mesh axes at once (vocab over tensor, embed over fsdp), XLA (jax 0.10.2,
    # CPU, Shardy and GSPMD alike) computed wrong gradients for the tied MLM decoder on a
    # 2x2x2 mesh while the forward pass was right. Split over fsdp only, it is exact.
    ("vocab", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("position", None),
    ("type_vocab", None),
    ("norm", None),
    ("labels", None),
)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Sizes of (data, fsdp, tensor); one of them may be -1, meaning "whatever is left".

    >>> mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8)
    (2, 2, 2)
    """
    sizes = [int(mesh_config[name]) for name in MESH_AXES]
    desc = ", ".join(f"config.mesh.{n}={s}" for n, s in zip(MESH_AXES, sizes, strict=True))
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"{desc}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"{desc}: {num_devices} devices are not divisible by {known}")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"{desc}: the mesh has {math.prod(sizes)} devices, not {num_devices}")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: every device of every process).

    Axes are `Auto` so that the logical-rule shardings and XLA's propagation decide layouts
    (`jax.make_mesh` now defaults to `Explicit` axes, which logical rules do not use).
    """
    devices = list(jax.devices()) if devices is None else list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def logical_rules(config: ml_collections.ConfigDict | None = None) -> Rules:
    """`DEFAULT_RULES` with ``config.logical_axis_rules`` entries replacing those of the same name.

    Mesh axes a rule names must be ones of `MESH_AXES`; an unknown one is an error naming it.
    """
    overrides = config.get("logical_axis_rules", ()) if config is not None else ()
    rules = dict(DEFAULT_RULES)
    for entry in overrides or ():
        if len(entry) != 2:
            raise ValueError(
                f"config.logical_axis_rules entry {entry!r} is not a (logical, mesh_axes) pair"
            )
        name, axes = entry
        axes = tuple(axes) if isinstance(axes, list) else axes
        for axis in (axes,) if isinstance(axes, str) else (axes or ()):
            if axis not in MESH_AXES:
                raise ValueError(
                    f"config.logical_axis_rules: {name!r} -> unknown mesh axis {axis!r}; "
                    f"mesh axes are {MESH_AXES}"
                )
        rules[name] = axes
    return tuple(rules.items())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp; every other axis replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split (the size of data x fsdp)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(batch_size: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
    """Raises when the global batch cannot be split evenly over the mesh, microbatches, hosts."""
    split = data_parallel_size(mesh)
    mesh_desc = (
        f"the mesh's data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {split} "
        f"(config.mesh.data, config.mesh.fsdp)"
    )
    if batch_size % grad_accum_steps:
        raise ValueError(
            f"config.batch_size={batch_size} is not divisible by "
            f"config.optim.grad_accum_steps={grad_accum_steps}"
        )
    micro = batch_size // grad_accum_steps
    if micro % split:
        what = (
            f"config.batch_size={batch_size}"
            if grad_accum_steps == 1
            else f"the microbatch config.batch_size / config.optim.grad_accum_steps = {micro}"
        )
        raise ValueError(f"{what} is not divisible by {mesh_desc}")
    if batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size={batch_size} is not divisible by the {jax.process_count()} "
            "processes"
        )


def global_batch(
    local_batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: int
) -> dict[str, jax.Array]:
    """Assembles the global batch from this host's rows (every host calls this in lockstep).

    Every key has `global_batch_size` / processes rows per host, except the token rows of a
    packed fine-tuning batch (it carries "cls_index"; `bertjax.data.example_packing`), which
    have as many rows as its input_ids.
    """
    sharding = batch_sharding(mesh)
    packed_rows = None
    if "cls_index" in local_batch:
        from bertjax.data.example_packing import ROW_KEYS  # local: keep launchers light

        packed_rows = {key: len(local_batch["input_ids"]) for key in ROW_KEYS}
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        local_rows = global_batch_size // jax.process_count()
        expected = (packed_rows or {}).get(key, local_rows)
        if value.shape[0] != expected or local_rows * jax.process_count() != global_batch_size:
            raise ValueError(
                f"batch key {key!r}: this host gave {value.shape[0]} rows, expected "
                f"{expected} (config.batch_size={global_batch_size} over "
                f"{jax.process_count()} processes)"
            )
        shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


def param_shardings(boxed_abstract_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a params tree whose leaves are flax `Partitioned` (logical) boxes."""
    import flax.linen as nn  # local: keep this module importable without flax for launchers

    specs = nn.get_partition_spec(boxed_abstract_params)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(abstract_tree: Any, shardings: Any, what: str = "parameter") -> None:
    """Raises when an array dimension does not split evenly over the mesh axes mapped to it.

    XLA would pad such a dimension silently; we measured that this changes the losses (a
    vocabulary of 3239 split over tensor=2), so an uneven split is an error naming the array.
    """
    flat_arrays, _ = jax.tree_util.tree_flatten_with_path(abstract_tree)
    flat_shardings = jax.tree.leaves(shardings)
    for (path, array), shard in zip(flat_arrays, flat_shardings, strict=True):
        spec = getattr(shard, "spec", None)
        if spec is None:
            continue
        for dim, axes in zip(array.shape, spec, strict=False):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            ways = math.prod(shard.mesh.shape[a] for a in names)
            if dim % ways:
                raise ValueError(
                    f"{what} {jax.tree_util.keystr(path)} of shape {tuple(array.shape)} cannot "
                    f"be split as {spec} over the mesh {dict(shard.mesh.shape)}: {dim} is not "
                    f"divisible by {ways}. Change the model size, the mesh (config.mesh) or the "
                    "rule for that axis (config.logical_axis_rules)."
                )


def describe(tree: Any) -> dict[str, str]:
    """Path -> PartitionSpec string of every array in a sharded tree (for logs and tests)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in flat:
        spec = getattr(getattr(leaf, "sharding", None), "spec", None)
        out[jax.tree_util.keystr(path)] = str(spec)
    return out
