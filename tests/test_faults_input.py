"""No silently ignored input, and numerics: command-line keys the run would not read, an
explicit total_steps on an epoch config, --dry_run on GLUE, NaN steps skipped or stopping the
run. See docs/reliability.md."""

import dataclasses
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from launch_util import TINY_MODEL

from bertjax import checkpointing, config_lib, tasks, train
from bertjax.tasks import bert_pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = {
    **TINY_MODEL,
    "log_every": 1,
    "eval_every": -1,
    "checkpoint_every": 1,
    "keep_checkpoints": 10,
    "optim.warmup_steps": 1,
}


def _main(*args, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "bertjax.main", f"--workdir={tmp_path / 'run'}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_text_files_on_the_command_line_means_those_files(tmp_path):
    config = config_lib.load("configs/bert_tiny_pretrain.py")
    notes = config_lib.resolve_command_line(config, ["data.text_files"])
    assert config.data.source == "text_files" and "data.source set to 'text_files'" in notes[0]
    # Through the command line: the run reads the file given (here a missing one, named).
    missing = tmp_path / "corpus.txt"
    result = _main(
        "--config=configs/bert_tiny_pretrain.py",
        f"--config.data.text_files={missing}",
        tmp_path=tmp_path,
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr[-3000:], result.stderr[-3000:]


def test_a_key_the_run_would_not_read_is_an_error_naming_it(tmp_path):
    config = config_lib.load("configs/bert_tiny_pretrain.py")
    with pytest.raises(ValueError, match=r"data.tfds_name is not read.*data.source='tfds'"):
        config_lib.resolve_command_line(config, ["data.tfds_name"])
    config = config_lib.load("configs/bert_tiny_pretrain.py", {"data.vocab_file": "v.txt"})
    with pytest.raises(ValueError, match=r"data.vocab_size is not read"):
        config_lib.resolve_command_line(config, ["data.vocab_file", "data.vocab_size"])
    # An explicit data.source keeps its meaning: embedded + text_files is a contradiction.
    config = config_lib.load("configs/bert_tiny_pretrain.py")
    with pytest.raises(ValueError, match=r"data.text_files is not read"):
        config_lib.resolve_command_line(config, ["data.source", "data.text_files"])
    # Keys the run does read pass.
    config = config_lib.load("configs/bert_tiny_pretrain.py")
    assert config_lib.resolve_command_line(config, ["total_steps", "data.vocab_size"]) == []

    result = _main(
        "--config=configs/bert_tiny_pretrain.py",
        "--config.data.prepared_dir=/data/x",
        tmp_path=tmp_path,
    )
    assert result.returncode != 0
    assert "--config.data.prepared_dir is not read by this run" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_override_keys_reads_both_flag_forms():
    argv = ["--config=c.py", "--config.total_steps=1", "--config.optim.b1", "0.8", "--x=1"]
    assert config_lib.override_keys(argv) == ["total_steps", "optim.b1"]


def test_explicit_total_steps_bounds_an_epoch_based_run():
    config = config_lib.load("configs/glue.py:sst2", {"total_steps": 1})
    schedule = train.resolve_schedule(config, steps_per_epoch=2105)
    assert schedule.total_steps == 1
    config = config_lib.load("configs/glue.py:sst2")
    assert train.resolve_schedule(config, steps_per_epoch=2105).total_steps == 6315
    # Without data (--dry_run) the epoch count needs no steps_per_epoch.
    assert train.resolve_schedule(config, None, dry_run=True).total_steps >= 1
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train.resolve_schedule(config, None)


@pytest.mark.slow
def test_dry_run_works_on_a_glue_config(tmp_path):
    config = config_lib.load(
        "configs/glue.py:sst2",
        {"model.preset": "tiny", "model.vocab_size": 1000, "data.max_seq_length": 32},
    )
    result = train.run(config, tmp_path, dry_run=True, devices=jax.devices()[:1])
    assert result.dry_run["params"] > 0
    assert not (tmp_path / "checkpoints").exists()


class _Poisoned:
    """Train batches whose MLM weights are NaN at the given (1-based) batch numbers."""

    def __init__(self, inner, bad_batches):
        self.inner, self.bad, self.count = inner, set(bad_batches), 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        self.count += 1
        if self.count in self.bad:
            batch = {**batch, "masked_lm_weights": np.full_like(batch["masked_lm_weights"], np.nan)}
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def _register_poisoned(bad_batches):
    def build_data(config, host):
        data = bert_pretrain.build_data(config, host)
        return dataclasses.replace(data, train=_Poisoned(data.train, bad_batches))

    name = "poisoned_" + "_".join(map(str, bad_batches))
    tasks.register(dataclasses.replace(bert_pretrain.TASK, name=name, build_data=build_data))
    return name


@pytest.mark.slow
def test_skip_nonfinite_steps_skips_without_updating_then_stops(tmp_path):
    task = _register_poisoned([3, 4, 6])
    config = config_lib.load(
        "configs/bert_tiny_pretrain.py",
        {**TINY, "task": task, "total_steps": 5, "skip_nonfinite_steps": 2},
    )
    result = train.run(config, tmp_path / "a", devices=jax.devices()[:1])
    assert result.step == 5
    assert int(result.state["nonfinite_skipped"]) == 2
    assert all(np.isfinite(r["loss"]) for r in result.records)
    assert [r["step"] for r in result.records] == [1, 2, 5]  # 3 and 4 were skipped
    # A skipped step leaves params and optimizer state exactly as they were.
    ckpt = checkpointing.Checkpointer(tmp_path / "a", keep=10)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), result.state
    )
    after_2, _ = ckpt.restore(2, abstract)
    after_4, _ = ckpt.restore(4, abstract)
    ckpt.close()
    for key in ("params", "opt_state"):
        for a, b in zip(jax.tree.leaves(after_2[key]), jax.tree.leaves(after_4[key]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(after_4["step"]) == 4 and int(after_4["nonfinite_skipped"]) == 2

    # The budget used up, the next non-finite step stops the run; the last good step is kept.
    # (A new process: its first batch is step 6.)
    config = config_lib.load(
        "configs/bert_tiny_pretrain.py",
        {**TINY, "task": _register_poisoned([1]), "total_steps": 8, "skip_nonfinite_steps": 2},
    )
    with pytest.raises(train.NonFiniteLossError) as e:
        train.run(config, tmp_path / "a", devices=jax.devices()[:1])
    message = str(e.value)
    assert "step 6" in message and "last good checkpoint is step 5" in message
    assert "learning_rate" in message and "config.model.dtype" in message


@pytest.mark.parametrize("config_file", ["configs/bert_tiny_pretrain.py", "configs/gpt_tiny_lm.py"])
def test_rows_longer_than_the_position_embeddings_are_an_error_naming_both(config_file):
    config = config_lib.load(REPO / config_file, {"data.max_seq_length": 4096})
    task = tasks.get(config.task)
    with pytest.raises(ValueError, match=r"max_seq_length=4096 exceeds .*max_position_embeddings"):
        task.build_model(config, None)
