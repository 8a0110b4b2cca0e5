r"""Offline step for corpora too big to tokenize at start-up: text -> instance shards (ArrayRecord).

    python -m bertjax.data.prepare --config=configs/bert_base_pretrain.py \
        --config.data.source=text_files --config.data.text_files='corpus/*.txt' \
        --output_dir=/data/bert_prepared --num_shards=256 --num_workers=16

Tokenization and pairing run in parallel worker processes (one shard per task, a progress bar
over shards); every train document yields `data.dupe_factor` passes of instances, as
google-research/bert's `create_pretraining_data.py`. Train with
`--config.data.source=prepared --config.data.prepared_dir=/data/bert_prepared`; masking stays
online and dynamic. Random "NotNext" segments are drawn from documents of the same shard.

`--runner=DirectRunner|DataflowRunner|FlinkRunner|SparkRunner` (with
`--beam_pipeline_options='...'`) runs the same stages as an Apache Beam pipeline
(`bertjax.data.prepare_beam`) for corpora beyond one machine; both engines share
`bertjax.data.prepare_stages`, so they write the same shards record for record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertjax.data import embedded_corpus, pipeline, shards, sources
from bertjax.data import prepare_stages as stages
from bertjax.data.cleaning import CleaningStats, Document, document_hash
from bertjax.data.settings import DataSettings
from bertjax.data.tokenizer import WordPieceTokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ShardJob:
    """One worker task: the documents of one train shard and one eval shard."""

    index: int
    num_shards: int
    output_dir: str
    settings: DataSettings
    vocab: list[str]
    seed: int
    train_docs: list[Document] | None = None  # None: read this shard from TFDS in the worker
    eval_docs: list[Document] | None = None


def _run_job(job: ShardJob) -> dict[str, Any]:
    """Tokenizes, pairs and writes one shard; returns its counts (runs in a worker process)."""
    s = job.settings
    stats = CleaningStats()
    train_docs, eval_docs = job.train_docs, job.eval_docs
    if train_docs is None:
        raw = sources.tfds_documents(
            s.tfds_name,
            split=s.tfds_split,
            data_dir=s.tfds_data_dir,
            text_key=s.tfds_text_key,
            unicode_errors=s.unicode_errors,
            process_index=job.index,
            process_count=job.num_shards,
            stats=stats,
        )
        docs = pipeline._clean(raw, s, stats)
        train_docs, eval_docs = pipeline.split_eval_by_threshold(docs, s.eval_fraction)
    tokenizer = WordPieceTokenizer(job.vocab, do_lower_case=s.do_lower_case)
    out: dict[str, Any] = {"stats": stats.as_dict(), "shards": []}
    for split, docs in (("train", train_docs), ("eval", eval_docs or [])):
        if not docs:
            continue
        records = stages.shard_records(
            docs, split=split, index=job.index, settings=s, tokenizer=tokenizer, seed=job.seed
        )
        name = shards.shard_name(split, job.index, job.num_shards)
        digest = stages.write_records(os.path.join(job.output_dir, name), records)
        out["shards"].append(
            stages.shard_result(split, job.index, job.num_shards, len(records), digest)
        )
    return out


def prepare(
    settings: DataSettings,
    *,
    output_dir: str,
    seed: int,
    num_shards: int,
    num_workers: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes a prepared directory (see `bertjax.data.shards`) with a process pool on this host;
    returns its metadata. `bertjax.data.prepare_beam.prepare_beam` writes the same with Beam."""
    check_request(settings, num_shards)
    if num_workers < 1:
        raise ValueError("--num_workers must be >= 1")
    os.makedirs(output_dir, exist_ok=True)
    if os.path.exists(os.path.join(output_dir, shards.METADATA)):
        raise FileExistsError(f"{output_dir} already holds a prepared corpus; choose a new one")
    stats = CleaningStats()
    jobs: list[ShardJob]
    if settings.source == "tfds":
        # Each worker reads its own examples (index::num_shards), so nothing is loaded here;
        # duplicates are found within a shard only (the Beam engine dedups corpus-wide).
        tokenizer = WordPieceTokenizer.from_vocab_file(
            settings.vocab_file, do_lower_case=settings.do_lower_case
        )
        corpus_fp = f"tfds:{settings.tfds_name}[{settings.tfds_split}]"
        jobs = [
            ShardJob(i, num_shards, output_dir, settings, tokenizer.vocab, seed)
            for i in range(num_shards)
        ]
    else:
        if settings.source == "embedded":
            raw = [list(d) for d in embedded_corpus.embedded_documents()]
        else:
            raw = sources.read_text_files(
                settings.text_files,
                text_format=settings.text_format,
                unicode_errors=settings.unicode_errors,
                stats=stats,
            )
        docs = pipeline._clean(raw, settings, stats)  # dedup keeps the first of equal texts
        plan = stages.plan_shards(
            np.array([document_hash(d) for d in docs], np.uint64),
            eval_fraction=settings.eval_fraction,
            num_shards=num_shards,
        )
        corpus_fp = plan.fingerprint
        tokenizer = pipeline.resolve_tokenizer(
            settings, vocab_docs=docs, corpus_fingerprint=corpus_fp, vocab_dir=None, process_index=0
        )
        num_shards = plan.num_shards
        jobs = [
            ShardJob(
                i,
                num_shards,
                output_dir,
                settings,
                tokenizer.vocab,
                seed,
                train_docs=[docs[k] for k in plan.members("train", i)],
                eval_docs=[docs[k] for k in plan.members("eval", i)],
            )
            for i in range(num_shards)
        ]
    tokenizer.save_vocab(os.path.join(output_dir, shards.VOCAB))

    results = _run_all(jobs, num_workers, progress)
    for r in results:
        stats.merge(CleaningStats(**r["stats"]))
    meta = stages.build_metadata(
        settings,
        seed=seed,
        num_shards=num_shards,
        corpus_fingerprint=corpus_fp,
        tokenizer=tokenizer,
        results=[shard for r in results for shard in r["shards"]],
        stats=stats,
        engine="multiprocessing",
    )
    tmp = os.path.join(output_dir, shards.METADATA + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, os.path.join(output_dir, shards.METADATA))  # last: marks the output complete
    return meta


def check_request(settings: DataSettings, num_shards: int) -> None:
    """Refuses what neither engine can prepare (a prepared source, no shards)."""
    if settings.source == "prepared":
        raise ValueError("data.source='prepared' is already prepared; choose a text source")
    if num_shards < 1:
        raise ValueError("--num_shards must be >= 1")


def _run_all(jobs: Sequence[ShardJob], num_workers: int, progress: bool) -> list[dict[str, Any]]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="prepare shards", unit="shard", disable=not progress)
    results: list[dict[str, Any]] = [{}] * len(jobs)
    if num_workers == 1:
        for i, job in enumerate(jobs):
            results[i] = _run_job(job)
            bar.update()
    else:
        # spawn: the Rust tokenizer's thread pool does not survive fork.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(num_workers, initializer=_init_worker) as pool:
            for i, res in pool.imap_unordered(_indexed_job, list(enumerate(jobs))):
                results[i] = res
                bar.update()
    bar.close()
    return results


def _init_worker() -> None:
    # Each worker is one process; Rust threads on top would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _indexed_job(item: tuple[int, ShardJob]) -> tuple[int, dict[str, Any]]:
    return item[0], _run_job(item[1])


RUNNERS = ("multiprocessing", "DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")


def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    config = f.config
    settings = DataSettings.from_config(config.data)
    seed = int(config.get("seed", 0))
    if f.runner == "multiprocessing":
        if f.beam_pipeline_options:
            raise ValueError("--beam_pipeline_options needs a Beam --runner (e.g. DirectRunner)")
        meta = prepare(
            settings,
            output_dir=f.output_dir,
            seed=seed,
            num_shards=f.num_shards,
            num_workers=f.num_workers,
        )
    else:
        if f["num_workers"].present:
            raise ValueError(
                "--num_workers is for --runner=multiprocessing; give a Beam runner's workers in "
                "--beam_pipeline_options (e.g. --direct_num_workers=2, --max_num_workers=64)"
            )
        from bertjax.data.prepare_beam import prepare_beam

        meta = prepare_beam(
            settings,
            output_dir=f.output_dir,
            seed=seed,
            num_shards=f.num_shards,
            runner=f.runner,
            pipeline_options=shlex.split(f.beam_pipeline_options),
        )
    print(
        f"wrote {meta['num_train']} train / {meta['num_eval']} eval instances in "
        f"{len(meta['train_files'])} + {len(meta['eval_files'])} shards to {f.output_dir}"
    )
    print(f"cleaning: {CleaningStats(**meta['stats']).summary()}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("output_dir", None, "Directory to write the shards to (must be new).")
    flags.DEFINE_integer("num_shards", 64, "Number of train shards (and eval shards).")
    flags.DEFINE_integer(
        "num_workers", os.cpu_count() or 1, "Worker processes (multiprocessing runner)."
    )
    flags.DEFINE_enum(
        "runner",
        "multiprocessing",
        RUNNERS,
        "multiprocessing: a process pool on this host; otherwise the Apache Beam runner "
        "(needs the beam extra: pip install 'bertjax[beam]').",
    )
    flags.DEFINE_string(
        "beam_pipeline_options",
        "",
        "Beam pipeline flags, space-separated, e.g. '--direct_num_workers=2 "
        "--direct_running_mode=multi_processing' or '--project=P --region=R "
        "--temp_location=gs://B/tmp'.",
    )
    flags.mark_flags_as_required(["config", "output_dir"])
    app.run(main)
