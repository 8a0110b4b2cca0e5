"""Data faults: input files changed or removed between a run and its resumption, a corpus
that cleaning empties, and loading that never unpickles. See docs/reliability.md."""

import pickle

import jax
import numpy as np
import pytest
from launch_util import TINY_MODEL

from bertjax import checkpointing, config_lib, convert, inputs, train
from bertjax.data import build_pretraining_data, embedded_corpus

TINY = {
    **TINY_MODEL,
    "data.source": "text_files",
    "log_every": 1,
    "eval_every": -1,
    "checkpoint_every": 2,
    "optim.warmup_steps": 1,
}


def _write_corpus(path):
    docs = embedded_corpus.embedded_documents()
    path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n")


def _run(corpus, workdir, total_steps):
    config = config_lib.load(
        "configs/bert_tiny_pretrain.py",
        {**TINY, "data.text_files": str(corpus), "total_steps": total_steps},
    )
    return train.run(config, workdir, devices=jax.devices()[:1])


def test_input_file_changed_or_removed_before_resuming_is_named(tmp_path):
    corpus = tmp_path / "corpus.txt"
    _write_corpus(corpus)
    _run(corpus, tmp_path / "run", 2)
    with corpus.open("a") as f:
        f.write("\nA new document appended after the run had started.\nIt has two lines.\n")
    with pytest.raises(inputs.InputsChangedError, match=f"changed: {corpus}"):
        _run(corpus, tmp_path / "run", 4)
    other = tmp_path / "moved.txt"
    corpus.rename(other)
    # Named as removed (before the pipeline would fail on a missing path) ...
    saved = {str(corpus): "1:x"}
    with pytest.raises(inputs.InputsChangedError, match=f"removed: {corpus}"):
        inputs.check_unchanged(saved, {str(corpus): "missing"}, "step 2")
    # ... and the untouched corpus resumes.
    _write_corpus(corpus)
    assert _run(corpus, tmp_path / "run", 4).step == 4


def test_fingerprints_name_added_files_and_follow_globs(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    config = config_lib.load(
        "configs/bert_tiny_pretrain.py",
        {"data.source": "text_files", "data.text_files": str(tmp_path / "*.txt")},
    )
    before = inputs.fingerprint(config)
    assert list(before) == [str(tmp_path / "a.txt")]
    (tmp_path / "b.txt").write_text("two")
    with pytest.raises(inputs.InputsChangedError, match="added: .*b.txt"):
        inputs.check_unchanged(before, inputs.fingerprint(config), "step 1")


def test_a_corpus_that_cleaning_empties_is_an_error_with_the_counts(tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("a b\n\nc d\n\nok\n")  # every document under data.min_document_chars
    config = config_lib.load(
        "configs/bert_tiny_pretrain.py",
        {"data.source": "text_files", "data.text_files": str(corpus)},
    )
    with pytest.raises(ValueError) as e:
        build_pretraining_data(config.data, seed=0, local_batch_size=8, vocab_dir=str(tmp_path))
    message = str(e.value)
    assert str(corpus) in message and "0 training document(s)" in message
    assert "documents_in=3" in message and "dropped_too_short=3" in message


def _no_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    np_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: np_load(*a, **{**k, "allow_pickle": False}))


def test_loading_checkpoints_and_hf_directories_never_unpickles(tmp_path, monkeypatch, minilm_dir):
    import shutil

    from bertjax import sharding

    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rep = sharding.replicated(mesh)
    state = {
        "step": jax.device_put(np.int32(3), rep),
        "params": {"w": jax.device_put(np.arange(6.0, dtype=np.float32), rep)},
    }
    ckpt = checkpointing.Checkpointer(tmp_path / "run", keep=2)
    ckpt.save(3, state, {"epoch": 0})
    ckpt.close()

    _no_pickle(monkeypatch)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    ckpt = checkpointing.Checkpointer(tmp_path / "run", keep=2)
    step, restored, data_state = ckpt.restore_latest(abstract)
    ckpt.close()
    assert step == 3 and data_state == {"epoch": 0}
    np.testing.assert_array_equal(checkpointing.restore_params(tmp_path / "run")["w"], np.arange(6))
    cfg, params = convert.from_hf(minilm_dir)
    assert cfg.num_layers == 6 and params

    # A directory with only pytorch_model.bin is refused with the hint.
    torch_only = tmp_path / "torch_only"
    torch_only.mkdir()
    shutil.copy(minilm_dir / "config.json", torch_only / "config.json")
    (torch_only / "pytorch_model.bin").write_bytes(pickle.dumps({"not": "loaded"}))
    with pytest.raises(FileNotFoundError, match="never unpickles pytorch_model.bin"):
        convert.from_hf(torch_only)
