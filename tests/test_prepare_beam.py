"""Prepare on Apache Beam: the same shards as the multiprocessing engine, record for record.

The Beam runs use the DirectRunner in multi-process mode with 2 workers (what a one-host check of
a distributed runner can do) or, for the small checks, in memory.
"""

import collections
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from bertjax import config_lib, train
from bertjax.data.prepare import prepare
from bertjax.data.settings import DataSettings, default_data_config
from bertjax.data.shards import METADATA
from bertjax.tasks import bert_pretrain
from bertjax.tasks.base import HostInfo

REPO = pathlib.Path(__file__).resolve().parents[1]
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
IN_MEMORY = ["--direct_running_mode=in_memory"]


@pytest.fixture
def beam():
    return pytest.importorskip("apache_beam", reason="the beam extra is not installed")


def _settings(**kw) -> DataSettings:
    cfg = default_data_config()
    cfg.vocab_size, cfg.max_seq_length, cfg.max_predictions_per_seq = 1000, 32, 5
    cfg.dupe_factor, cfg.eval_fraction = 2, 0.1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return DataSettings.from_config(cfg)


def _beam_cli(out: pathlib.Path, *overrides: str, num_shards: int = 4) -> dict:
    """Runs `python -m bertjax.data.prepare --runner=DirectRunner` (2 worker processes)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertjax.data.prepare",
            "--config=configs/bert_tiny_pretrain.py",
            "--config.data.vocab_size=1000",
            "--config.data.max_seq_length=32",
            "--config.data.max_predictions_per_seq=5",
            "--config.data.dupe_factor=2",
            "--config.data.eval_fraction=0.1",
            *overrides,
            f"--output_dir={out}",
            f"--num_shards={num_shards}",
            "--runner=DirectRunner",
            f"--beam_pipeline_options={' '.join(TWO_WORKERS)}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "wrote " in res.stdout
    return json.loads((out / METADATA).read_text())


def _records(directory: pathlib.Path, files: list[str]) -> list[bytes]:
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    source = ArrayRecordDataSource([str(directory / f) for f in files])
    return source.__getitems__(list(range(len(source))))


def _assert_same_output(mp_dir: pathlib.Path, beam_dir: pathlib.Path) -> dict:
    mp_meta = json.loads((mp_dir / METADATA).read_text())
    beam_meta = json.loads((beam_dir / METADATA).read_text())
    assert mp_meta.pop("engine") == "multiprocessing"
    assert beam_meta.pop("engine") == "beam:DirectRunner"
    assert beam_meta == mp_meta  # counts, files, cleaning and dedup counts, shard digests
    for split in ("train", "eval"):
        files = mp_meta[f"{split}_files"]
        mp_records, beam_records = _records(mp_dir, files), _records(beam_dir, files)
        assert len(mp_records) == mp_meta[f"num_{split}"] > 0
        assert collections.Counter(beam_records) == collections.Counter(mp_records)
        for name in files:  # and the same order within every shard
            assert (beam_dir / name).read_bytes() == (mp_dir / name).read_bytes(), name
    assert (beam_dir / "vocab.txt").read_bytes() == (mp_dir / "vocab.txt").read_bytes()
    return mp_meta


def _train_config(prepared: pathlib.Path):
    """configs/bert_tiny_pretrain.py, shrunk, reading the prepared shards."""
    return config_lib.load(
        "configs/bert_tiny_pretrain.py",
        {
            "model.num_layers": 1,
            "model.hidden_size": 32,
            "model.num_heads": 2,
            "model.intermediate_size": 64,
            "model.max_position_embeddings": 32,
            "data.source": "prepared",
            "data.prepared_dir": str(prepared),
            "data.max_seq_length": 32,
            "data.max_predictions_per_seq": 5,
            "batch_size": 8,
            "total_steps": 4,
            "log_every": 1,
            "eval_every": -1,
            "checkpoint_every": 100,
            "optim.warmup_steps": 1,
        },
    )


def _train_losses(prepared: pathlib.Path, workdir: pathlib.Path) -> list[float]:
    """A few steps of configs/bert_tiny_pretrain.py (shrunk) reading the prepared shards."""
    import jax

    train.run(_train_config(prepared), workdir, devices=jax.devices()[:1])
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _assert_trains_alike(mp_dir: pathlib.Path, beam_dir: pathlib.Path, tmp_path) -> list[float]:
    """Training from the Beam shards gives the losses of training from the multiprocessing ones.

    Trained once, from the multiprocessing shards. The training run reads the prepared
    directory only through the task's data (`bert_pretrain.build_data`): the vocabulary, which
    sizes the model, and the batches. Both are the same from either directory, batch for batch
    over the steps trained; with the same config and seed, so are the losses. (The loop's
    determinism is tests/test_train_resume.py's: bit-identical losses across restarts.)
    """
    losses = _train_losses(mp_dir, tmp_path / "run_mp")
    assert len(losses) == 4 and all(np.isfinite(losses))
    datas = []
    for prepared in (mp_dir, beam_dir):
        config = _train_config(prepared)
        host = HostInfo(
            seed=config.seed,
            process_index=0,
            process_count=1,
            local_batch_size=config.batch_size,
            global_batch_size=config.batch_size,
            workdir=str(tmp_path / f"batches_{prepared.name}"),
        )
        datas.append(bert_pretrain.build_data(config, host))
    mp_data, beam_data = datas
    assert beam_data.vocab_size == mp_data.vocab_size
    for step in range(len(losses)):
        mp_batch, beam_batch = next(mp_data.train), next(beam_data.train)
        assert sorted(beam_batch) == sorted(mp_batch)
        for key in mp_batch:
            np.testing.assert_array_equal(beam_batch[key], mp_batch[key], err_msg=f"{step} {key}")
    return losses


@pytest.mark.slow
def test_beam_and_multiprocessing_agree_on_the_embedded_corpus(beam, tmp_path):
    mp_dir, beam_dir = tmp_path / "mp", tmp_path / "beam"
    prepare(_settings(), output_dir=str(mp_dir), seed=0, num_shards=4, num_workers=2)
    _beam_cli(beam_dir)
    meta = _assert_same_output(mp_dir, beam_dir)
    assert len(meta["train_files"]) == 4 and meta["dedup"]["duplicates_dropped"] > 0

    _assert_trains_alike(mp_dir, beam_dir, tmp_path)


@pytest.mark.slow
def test_beam_and_multiprocessing_agree_on_wikitext(beam, shared_data, tmp_path):
    corpus = shared_data / "corpus"
    files = f"{corpus}/wiki.valid.tokens,{corpus}/wiki.test.tokens"
    mp_dir, beam_dir = tmp_path / "mp", tmp_path / "beam"
    settings = _settings(source="text_files", text_files=files, text_format="paragraphs")
    prepare(settings, output_dir=str(mp_dir), seed=0, num_shards=4, num_workers=2)
    _beam_cli(
        beam_dir,
        "--config.data.source=text_files",
        f"--config.data.text_files={files}",
        "--config.data.text_format=paragraphs",
    )
    meta = _assert_same_output(mp_dir, beam_dir)
    assert meta["stats"]["files_read"] == 2 and meta["num_train"] > 10_000

    _assert_trains_alike(mp_dir, beam_dir, tmp_path)


def _write(path: pathlib.Path, docs: list[list[str]]) -> None:
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")


def _docs(n: int, tag: str) -> list[list[str]]:
    return [
        [f"Document {tag} {i} says one thing about topic {i % 7}.", f"It goes on about {tag}{i}."]
        for i in range(n)
    ]


@pytest.mark.parametrize("dedup", [True, False])
def test_corpus_wide_dedup_counts_in_metadata(beam, tmp_path, dedup, monkeypatch):
    from bertjax.data import prepare_beam as pb
    from bertjax.data.prepare_beam import prepare_beam

    a, b = _docs(12, "a"), _docs(12, "b")
    # Exact duplicates across files, one of them only after normalisation (spaces, NFC).
    dup_spaced = [s.replace(" ", "   ") for s in a[3]]
    _write(tmp_path / "x0.txt", a)
    _write(tmp_path / "x1.txt", b + [a[0], dup_spaced, b[1]])
    _write(tmp_path / "x2.txt", [a[0]] + _docs(6, "c"))
    settings = _settings(
        source="text_files",
        text_files=f"{tmp_path}/x*.txt",
        vocab_size=300,
        dedup_documents=dedup,
        eval_fraction=0.2,
    )
    mp = prepare(settings, output_dir=str(tmp_path / "mp"), seed=3, num_shards=3, num_workers=1)
    bm = prepare_beam(
        settings,
        output_dir=str(tmp_path / "beam"),
        seed=3,
        num_shards=3,
        runner="DirectRunner",
        pipeline_options=IN_MEMORY,
    )
    expected = 4 if dedup else 0  # a[0] twice, a[3] (spaced), b[1]
    assert bm["dedup"] == {
        "enabled": dedup,
        "documents_checked": 34,
        "duplicates_dropped": expected,
        "documents_kept": 34 - expected,
    }
    assert bm["stats"]["dropped_duplicate"] == expected
    bm.pop("engine"), mp.pop("engine")
    assert bm == mp
    if dedup:
        # A remote output_dir (gs://, ...): shards are written to a local temporary file and
        # copied up through Beam's filesystems; here "remote" is the local disk again.
        monkeypatch.setattr(pb, "is_local", lambda path: False)
        remote = tmp_path / "remote"
        remote.mkdir()
        pb.prepare_beam(
            settings,
            output_dir=str(remote),
            seed=3,
            num_shards=3,
            runner="DirectRunner",
            pipeline_options=IN_MEMORY,
        )
        for f in (tmp_path / "beam").iterdir():
            assert (remote / f.name).read_bytes() == f.read_bytes(), f.name
        monkeypatch.undo()
    with pytest.raises(FileExistsError, match="already holds a prepared corpus"):
        prepare_beam(
            settings,
            output_dir=str(tmp_path / "beam"),
            seed=3,
            num_shards=3,
            runner="DirectRunner",
            pipeline_options=IN_MEMORY,
        )


def test_unknown_beam_option_is_an_error(beam, tmp_path):
    from bertjax.data.prepare_beam import prepare_beam

    with pytest.raises(ValueError, match=r"unknown Beam option\(s\) \['direct_num_worker'\]"):
        prepare_beam(
            _settings(),
            output_dir=str(tmp_path / "out"),
            seed=0,
            num_shards=1,
            runner="DirectRunner",
            pipeline_options=["--direct_num_worker=2"],
        )


def test_inputs_are_matched_on_beam_filesystems(beam, tmp_path):
    from bertjax.data.prepare_beam import match_files
    from bertjax.data.sources import DataSourceError

    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text("Some text.\n")
    paths = match_files(f"{tmp_path}/*.txt,{tmp_path}/a.txt,{tmp_path}/c.md")
    assert paths == [f"{tmp_path}/a.txt", f"{tmp_path}/b.txt", f"{tmp_path}/c.md"]
    with pytest.raises(DataSourceError, match=r"data.text_files: pattern .*\*.xml' matches no"):
        match_files(f"{tmp_path}/*.xml")
    with pytest.raises(FileNotFoundError, match="missing.txt' does not exist"):
        match_files(f"{tmp_path}/missing.txt")
    with pytest.raises(DataSourceError, match="is a directory; use a glob"):
        match_files(str(tmp_path))
    with pytest.raises(DataSourceError, match="data.text_files is empty"):
        match_files(" , ")


def test_tfds_input_dedups_across_the_whole_dataset(beam, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from bertjax.data import prepare_beam as pb

    docs = _docs(30, "t")
    examples = [{"text": "\n".join(d).encode()} for d in docs]
    examples += [examples[2], examples[17]]  # duplicates far apart (different read units)

    def fake_source(builder, split, **kwargs):
        assert builder.name == "lm1b" and split == "train"
        return examples

    vocab_dir = tmp_path / "v"
    prepare(
        _settings(vocab_size=300), output_dir=str(vocab_dir), seed=0, num_shards=1, num_workers=1
    )
    settings = _settings(source="tfds", tfds_name="lm1b", vocab_file=str(vocab_dir / "vocab.txt"))
    # The in-memory runner sees the mock; units of 8 examples put the duplicates in other units.
    with (
        tfds.testing.mock_data(num_examples=len(examples), as_data_source_fn=fake_source),
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(pb, "_TFDS_BLOCK", 8)
        meta = pb.prepare_beam(
            settings,
            output_dir=str(tmp_path / "out"),
            seed=0,
            num_shards=2,
            runner="DirectRunner",
            pipeline_options=IN_MEMORY,
        )
    assert meta["stats"]["documents_in"] == 32
    assert meta["dedup"]["duplicates_dropped"] == 2 and meta["num_train"] > 0


def test_missing_beam_extra_says_what_to_install(monkeypatch, tmp_path):
    from bertjax.data.prepare_beam import prepare_beam

    monkeypatch.setitem(sys.modules, "apache_beam", None)  # makes `import apache_beam` fail
    with pytest.raises(ImportError, match=r"pip install 'bertjax\[beam\]'"):
        prepare_beam(
            _settings(), output_dir=str(tmp_path), seed=0, num_shards=1, runner="DirectRunner"
        )


def test_plan_shards_holds_out_what_the_online_pipeline_holds_out():
    """The shard plan (run on one Beam worker over hashes only) makes the same eval split as
    `split_eval_exact` over the documents, ties between duplicate texts included."""
    from bertjax.data import embedded_corpus
    from bertjax.data.cleaning import document_hash
    from bertjax.data.pipeline import split_eval_exact
    from bertjax.data.prepare_stages import plan_shards

    docs = [list(d) for d in embedded_corpus.embedded_documents()]
    docs += docs[:5]  # duplicates: equal hashes, broken by position
    hashes = np.array([document_hash(d) for d in docs], np.uint64)
    for fraction in (0.03, 0.1, 0.5):
        train, held = split_eval_exact(docs, fraction)
        plan = plan_shards(hashes, eval_fraction=fraction, num_shards=7)
        assert [docs[i] for i in np.nonzero(plan.split == 1)[0]] == held
        assert plan.num_shards == min(7, len(train) // 2)
        for split, part in (("train", train), ("eval", held)):
            for i in range(plan.num_shards):
                assert [docs[k] for k in plan.members(split, i)] == part[i :: plan.num_shards]
    # Too few documents to hold any out: everything trains, in one shard.
    plan = plan_shards(hashes[:3], eval_fraction=0.5, num_shards=4)
    assert plan.split.tolist() == [0, 0, 0] and plan.num_shards == 1
