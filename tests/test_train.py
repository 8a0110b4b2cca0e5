"""The training loop in-process on the real model and data: end to end, sharding, NaN, dry run."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from launch_util import TINY_MODEL

from bertjax import checkpointing, config_lib, metrics, train

CONFIG = "configs/bert_tiny_pretrain.py"
# L1/H32, seq 32, a 1000-token vocabulary, batch 8: a step takes milliseconds.
TINY = {
    **TINY_MODEL,
    "log_every": 1,
    "eval_every": -1,
    "eval_batches": 2,
    "checkpoint_every": 100,
    "optim.warmup_steps": 1,
}
TRAIN_KEYS = {
    "loss",
    "mlm_loss",
    "nsp_loss",
    "mlm_accuracy",
    "nsp_accuracy",
    "learning_rate",
    "grad_norm",
    "examples_per_sec",
    "tokens_per_sec",
}


def tiny_config(**overrides):
    return config_lib.load(CONFIG, {**TINY, **overrides})


def one_device():
    """A 1-device mesh: compiles fastest (the mesh tests below use 8 devices)."""
    return jax.devices()[:1]


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_config_end_to_end(tmp_path, monkeypatch):
    # A made-up peak, so that the loop logs MFU on this CPU; the model-FLOP formula is spied on.
    monkeypatch.setattr(metrics, "peak_flops_per_device", lambda device=None: 1e12)
    formula_calls = []
    model_flops = metrics.model_flops_per_step

    def spy(cfg, batch_size, seq_len, masked_positions=0):
        flops = model_flops(cfg, batch_size, seq_len, masked_positions)
        formula_calls.append(((cfg.head, batch_size, seq_len, masked_positions), flops))
        return flops

    monkeypatch.setattr(metrics, "model_flops_per_step", spy)
    config = tiny_config(
        total_steps=16,
        eval_every=8,
        checkpoint_every=8,
        log_every=2,
        **{"optim.learning_rate": 5e-3},
    )
    result = train.run(config, tmp_path, devices=one_device())
    assert result.step == 16
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12, 14, 16]
    train_records = [r for r in records if "loss" in r]
    for record in train_records[1:]:  # the first interval has no timing (compilation)
        assert TRAIN_KEYS <= set(record), TRAIN_KEYS - set(record)
    assert all(np.isfinite(r["loss"]) for r in train_records)
    # MFU = model FLOPs (MLM head at the 5 masked slots of a row) x steps/s / peak.
    ((args, flops),) = formula_calls
    assert args == ("pretraining", 8, 32, 5)
    for record in train_records[1:]:
        assert record["mfu"] == pytest.approx(record["steps_per_sec"] * flops / 1e12)
    eval_records = [r for r in records if "eval/mlm_accuracy" in r]
    assert [r["step"] for r in eval_records] == [8, 16]
    assert {"eval/loss", "eval/mlm_loss", "eval/nsp_accuracy"} <= set(eval_records[0])
    # It learns: the masked-token loss falls well below its start (ln 1024 ~ 6.9).
    assert train_records[-1]["mlm_loss"] < train_records[0]["mlm_loss"] - 0.5
    assert eval_records[-1]["eval/mlm_loss"] < eval_records[0]["eval/mlm_loss"]
    # The learning rate follows warmup then linear decay to (almost) 0.
    assert train_records[-1]["learning_rate"] < 0.1 * 5e-3
    assert list((tmp_path / "tensorboard").iterdir()), "no TensorBoard event file"
    # run.json + vocab.txt: the pretraining run loads from its directory alone.
    from bertjax import inference

    run = inference.load_run(tmp_path)
    assert run.manifest["task"] == "bert_pretrain" and run.problem_type is None
    assert (
        run.manifest["tokenizer"]["type"] == "wordpiece" and run.model_config.head == "pretraining"
    )
    assert run.max_seq_length == 32 and run.tokenizer.vocab_size <= run.model_config.vocab_size
    ckpt = checkpointing.Checkpointer(tmp_path, keep=3)
    assert ckpt.all_steps() == [8, 16]
    ckpt.close()
    # Starting again on a finished run resumes at the end and does nothing.
    again = train.run(config, tmp_path, devices=one_device())
    assert again.step == 16 and again.records == []
    assert len(read_metrics(tmp_path)) == len(records)


def test_sharded_mesh_gives_the_losses_of_one_device(tmp_path):
    losses, states = {}, {}
    for name, mesh, devices in (
        ("one", {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
        ("eight", {"data": 2, "fsdp": 2, "tensor": 2}, None),
    ):
        config = tiny_config(total_steps=3, **{f"mesh.{k}": v for k, v in mesh.items()})
        result = train.run(config, tmp_path / name, devices=devices)
        losses[name] = [r["loss"] for r in result.records]
        states[name] = result.state
    assert len(losses["one"]) == 3
    np.testing.assert_allclose(losses["eight"], losses["one"], rtol=2e-6)
    # The params really are split: FFN kernel over fsdp x tensor, embeddings over fsdp.
    kernel = states["eight"]["params"]["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert kernel.shape == (32, 64)
    assert {s.data.shape for s in kernel.addressable_shards} == {(16, 32)}
    emb = states["eight"]["params"]["embeddings"]["word_embeddings"]["embedding"]
    assert emb.sharding.spec == PartitionSpec(None, "fsdp")
    assert {s.data.shape for s in emb.addressable_shards} == {(emb.shape[0], 16)}
    # Adam's moments follow their params.
    mu = states["eight"]["opt_state"]
    mu_shardings = {x.sharding.spec for x in jax.tree.leaves(mu) if x.ndim == 2}
    assert PartitionSpec("fsdp", "tensor") in mu_shardings
    one = jax.device_get(states["one"]["params"])
    eight = jax.device_get(states["eight"]["params"])
    max_diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), one, eight)))
    assert max_diff < 1e-6


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    results = {}
    for accum in (1, 2):
        # Two devices: each microbatch of 4 rows is split over both.
        config = tiny_config(total_steps=2, **{"optim.grad_accum_steps": accum})
        results[accum] = train.run(config, tmp_path / str(accum), devices=jax.devices()[:2]).records
    # Same examples, same start: the accumulated gradient is the mean of the two microbatch
    # gradients, which differs from the full batch only by the MLM normalisation per microbatch.
    for a, b in zip(results[1], results[2], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-1)
    # (That normalisation difference depends on which rows share a microbatch: ~1.3e-4 with
    # the host-count-independent batch order; a wrong accumulation is off by far more.)
    assert results[2][1]["param_norm"] == pytest.approx(results[1][1]["param_norm"], rel=5e-4)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    train.run(tiny_config(total_steps=2, checkpoint_every=2), tmp_path, devices=one_device())
    good = checkpointing.restore_params(tmp_path)
    # Resume with an infinite learning rate: the step after the checkpoint blows up.
    bad = tiny_config(total_steps=6, checkpoint_every=1, **{"optim.learning_rate": float("inf")})
    with pytest.raises(train.NonFiniteLossError) as e:
        train.run(bad, tmp_path, devices=one_device())
    message = str(e.value)
    assert "step 3" in message and "last good checkpoint is step 2" in message
    ckpt = checkpointing.Checkpointer(tmp_path, keep=3)
    assert ckpt.latest_step() == 2
    ckpt.close()
    kept = checkpointing.restore_params(tmp_path)
    for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(kept), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(r.get("loss", 0.0)) for r in read_metrics(tmp_path))


def test_packed_rows_train_and_evaluate(tmp_path):
    # Several instances per row (data.pack_sequences): K NSP slots per row; eval stays unpacked.
    config = tiny_config(total_steps=3, eval_every=3, **{"data.pack_sequences": True})
    result = train.run(config, tmp_path, devices=jax.devices()[:2])
    assert [r["step"] for r in result.records] == [1, 2, 3]
    last = result.records[-1]
    assert np.isfinite(last["loss"]) and 0.0 <= last["nsp_accuracy"] <= 1.0
    assert last["loss"] == pytest.approx(last["mlm_loss"] + last["nsp_loss"], rel=1e-6)
    assert last["eval/examples"] == 2 * 8 and np.isfinite(last["eval/loss"])


def test_batch_the_mesh_cannot_divide_names_both(tmp_path):
    config = tiny_config(total_steps=1, batch_size=12, **{"mesh.fsdp": 8, "mesh.data": 1})
    with pytest.raises(ValueError) as e:
        train.run(config, tmp_path)
    assert "config.batch_size=12" in str(e.value)
    assert "data x fsdp = 1 x 8 = 8" in str(e.value)


def test_dry_run_reports_params_memory_and_flops_without_training(tmp_path, capsys):
    config = tiny_config(**{"mesh.data": 1, "mesh.fsdp": 2})
    report = train.run(config, tmp_path, dry_run=True, devices=jax.devices()[:2]).dry_run
    assert report["devices"] == 2 and report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert report["params"] > 30_000
    assert report["flops_per_step_per_device"] > 0
    assert report["peak_bytes_per_device_estimate"] > 0
    out = capsys.readouterr().out
    assert "parameters" in out and "per-device memory" in out and "FLOPs per step" in out
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "run.json").exists()


def test_metric_writer_truncates_on_resume_and_formats_progress(tmp_path):
    writer = metrics.MetricWriter(tmp_path, enabled=True)
    for step in (1, 2, 3):
        writer.write(step, {"loss": np.float32(1.0 / step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a line cut short by kill -9
    writer.truncate_after(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert read_metrics(tmp_path)[1]["loss"] == float(np.float32(0.5))  # full precision
    writer.close()
    line = metrics.progress_line(150, 600, {"loss": 2.5, "mlm_accuracy": 0.25}, 3.0)
    assert line.startswith("step 150/600 (25%)") and "ETA 2m30s" in line

    class Device:
        device_kind = "TPU v4"

    assert metrics.peak_flops_per_device(Device()) == 275e12
    Device.device_kind = "cpu"
    assert metrics.peak_flops_per_device(Device()) is None
