r"""`python -m bertjax.data.prepare --runner=...`: the prepare step as an Apache Beam pipeline.

    python -m bertjax.data.prepare --config=configs/bert_base_pretrain.py \
        --config.data.source=text_files --config.data.text_files='gs://bucket/wiki/*.txt' \
        --output_dir=gs://bucket/wiki_prepared --num_shards=1024 \
        --runner=DataflowRunner --beam_pipeline_options='--project=P --region=R ...'

The stages are those of the multiprocessing engine (`bertjax.data.prepare`), and every per-document
step is the same function (`bertjax.data.prepare_stages`), so both engines write the same shards
record for record, whatever the runner, the number of workers or the order they finish in:

  read units -> clean -> dedup (CombinePerKey on the text hash) -> plan (one global step over
  the kept documents' 8-byte hashes) -> join each document to its (split, shard) -> group by
  shard -> instances + records -> ArrayRecord files -> vocab.txt + metadata.json (last).

A read unit is a file (any filesystem Beam reads: local, gs://, s3://, hdfs:// where its extra is
installed), a block of TFDS examples, or the embedded corpus; a document's position key is
(unit, index within unit), which orders the corpus. Without `data.vocab_file` the vocabulary is
trained from word counts summed across workers (`vocab_trainer.count_words`), as the
multiprocessing engine trains it from the same text. The plan step holds 24 bytes per kept
document (its position and hash) on one worker: about 0.5 GB for 20M documents.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from bertjax.data import embedded_corpus, shards, sources
from bertjax.data import prepare_stages as stages
from bertjax.data.cleaning import (
    CleaningStats,
    Document,
    clean_document,
    dedup_key,
    document_hash,
)
from bertjax.data.settings import DataSettings
from bertjax.data.tokenizer import WordPieceTokenizer, read_vocab_file
from bertjax.data.vocab_trainer import count_words

log = logging.getLogger(__name__)

_TFDS_BLOCK = 10_000  # TFDS examples per read unit
Position = tuple[int, int]  # (read unit, document index within it)


def _beam():
    try:
        import apache_beam
    except ImportError as e:
        raise ImportError(
            "--runner other than 'multiprocessing' runs the prepare step on Apache Beam, which "
            "is not installed: pip install 'bertjax[beam]' (or pip install -r "
            "requirements-beam.txt), or use --runner=multiprocessing"
        ) from e
    return apache_beam


# ---------------------------------------------------------------------------------------------
# Read units (planned on the launcher; read on the workers)
# ---------------------------------------------------------------------------------------------


def read_units(settings: DataSettings) -> list[tuple[int, tuple[Any, ...]]]:
    """The corpus as numbered read units: ("file", path), ("tfds", start, stop), ("embedded",).

    Raises:
      DataSourceError / FileNotFoundError: a pattern that matches nothing, a missing path, an
        unreadable TFDS dataset (naming the key).
    """
    if settings.source == "embedded":
        return [(0, ("embedded",))]
    if settings.source == "text_files":
        return [(i, ("file", p)) for i, p in enumerate(match_files(settings.text_files))]
    if settings.source == "tfds":
        n = len(_tfds_source(settings))
        return [
            (i, ("tfds", start, min(start + _TFDS_BLOCK, n)))
            for i, start in enumerate(range(0, n, _TFDS_BLOCK))
        ]
    raise ValueError(f"data.source={settings.source!r} cannot be prepared")


def match_files(spec: str, key: str = "data.text_files") -> list[str]:
    """`sources.expand_text_files` on every filesystem Beam knows (local, gs://, s3://, ...):
    each comma-separated item is a path or glob; matches sorted, a file named twice read once."""
    from apache_beam.io.filesystems import FileSystems

    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise sources.DataSourceError(
            f"{key} is empty; give a path or glob (comma-separated allowed)"
        )
    paths: list[str] = []
    for item in items:
        is_glob = bool(set("*?[") & set(item))
        if not is_glob:
            if os.path.isdir(item):
                raise sources.DataSourceError(
                    f"{key}: {item!r} is a directory; use a glob like {item}/*"
                )
            if not FileSystems.exists(item):
                raise FileNotFoundError(f"{key}: file {item!r} does not exist")
            paths.append(item)
            continue
        found = sorted(m.path for r in FileSystems.match([item]) for m in r.metadata_list)
        if not found:
            raise sources.DataSourceError(f"{key}: pattern {item!r} matches no file")
        paths.extend(found)
    return list(dict.fromkeys(paths))


def _tfds_source(settings: DataSettings):
    import tensorflow_datasets as tfds

    if not settings.tfds_name:
        raise sources.DataSourceError(
            "data.tfds_name is empty; set it, e.g. 'wikipedia/20230601.en'"
        )
    try:
        return tfds.data_source(
            settings.tfds_name,
            split=settings.tfds_split,
            data_dir=settings.tfds_data_dir or None,
            download=False,
        )
    except Exception as e:  # tfds raises several types (not found, not prepared, bad split)
        raise sources.DataSourceError(
            f"data.tfds_name={settings.tfds_name!r} split={settings.tfds_split!r}: cannot open "
            f"it as an array_record data source ({type(e).__name__}: {e}); prepare it first "
            "with `tfds build --file_format=array_record`"
        ) from e


def read_unit(
    unit: tuple[int, tuple[Any, ...]], settings: DataSettings
) -> Iterator[tuple[str, Any]]:
    """Reads and cleans one unit: ("doc", (position, document)) per kept document, then one
    ("stats", counts dict)."""
    from apache_beam.io.filesystems import FileSystems

    index, spec = unit
    stats = CleaningStats()
    raw: Iterable[Document]
    if spec[0] == "embedded":
        raw = [list(d) for d in embedded_corpus.embedded_documents()]
    elif spec[0] == "file":
        with FileSystems.open(spec[1]) as f:
            data = f.read()
        raw = sources.documents_from_bytes(
            data,
            where=spec[1],
            text_format=settings.text_format,
            unicode_errors=settings.unicode_errors,
            stats=stats,
        )
    else:
        source, s = _tfds_source(settings), settings
        raw = []
        for i in range(spec[1], spec[2]):
            example = source[i]
            if s.tfds_text_key not in example:
                raise sources.DataSourceError(
                    f"tfds {s.tfds_name}[{s.tfds_split}] example {i} has no field "
                    f"data.tfds_text_key={s.tfds_text_key!r}; fields: {sorted(example)}"
                )
            raw.append(
                sources.tfds_example_document(
                    example[s.tfds_text_key],
                    where=f"tfds {s.tfds_name}[{s.tfds_split}] example {i} field "
                    f"{s.tfds_text_key!r}",
                    unicode_errors=s.unicode_errors,
                    stats=stats,
                )
            )
    for k, doc in enumerate(raw):
        cleaned = clean_document(doc, min_document_chars=settings.min_document_chars, stats=stats)
        if cleaned is not None:
            yield "doc", ((index, k), cleaned)
    yield "stats", stats.as_dict()


# ---------------------------------------------------------------------------------------------
# Combiners (each is associative and commutative, so any bundling gives the same result)
# ---------------------------------------------------------------------------------------------


def _keep_first_fn():
    beam = _beam()

    class KeepFirst(beam.CombineFn):
        """Of documents with one dedup key: the one at the smallest position, and how many."""

        def create_accumulator(self):
            return None

        def add_input(self, acc, item):
            return self.merge_accumulators([acc, (item[0], item[1], 1)])

        def merge_accumulators(self, accs):
            live = [a for a in accs if a is not None]
            if not live:
                return None
            first = min(live, key=lambda a: a[0])
            return (first[0], first[1], sum(a[2] for a in live))

        def extract_output(self, acc):
            return acc

    return KeepFirst()


def _sum_stats_fn():
    beam = _beam()

    class SumStats(beam.CombineFn):
        def create_accumulator(self):
            return CleaningStats().as_dict()

        def add_input(self, acc, item):
            return {k: acc[k] + item.get(k, 0) for k in acc}

        def merge_accumulators(self, accs):
            total = CleaningStats().as_dict()
            for a in accs:
                total = {k: total[k] + a[k] for k in total}
            return total

        def extract_output(self, acc):
            return acc

    return SumStats()


# ---------------------------------------------------------------------------------------------
# Global steps
# ---------------------------------------------------------------------------------------------


def _hash_table_fn():
    beam = _beam()

    class HashTable(beam.CombineFn):
        """All (unit, index, hash) rows as one uint64 array [n, 3]: 24 bytes per document."""

        def create_accumulator(self):
            return [], []  # finished uint64 chunks, rows not yet in a chunk

        def add_input(self, acc, item):
            chunks, rows = acc
            (unit, index), h = item
            rows.append((unit, index, h))
            if len(rows) >= 65536:  # a chunk of rows costs 24 bytes each, a tuple ~150
                chunks.append(np.array(rows, np.uint64))
                rows.clear()
            return acc

        def merge_accumulators(self, accs):
            chunks = [c for acc in accs for c in acc[0]]
            rows = [r for acc in accs for r in acc[1]]
            if rows:
                chunks.append(np.array(rows, np.uint64))
            return chunks, []

        def extract_output(self, acc):
            chunks, _ = self.merge_accumulators([acc])
            return np.concatenate(chunks) if chunks else np.zeros((0, 3), np.uint64)

    return HashTable()


def _plan(table: np.ndarray, eval_fraction: float, num_shards: int) -> Iterator[Any]:
    """`prepare_stages.plan_shards` over every kept document, given [n, 3] rows of (unit, index,
    hash) in any order: one (position, (split, shard)) per document, and the plan's summary on
    the "info" output."""
    from apache_beam import pvalue

    table = table[np.lexsort((table[:, 1], table[:, 0]))]  # corpus order: by unit, then index
    plan = stages.plan_shards(table[:, 2], eval_fraction=eval_fraction, num_shards=num_shards)
    yield pvalue.TaggedOutput(
        "info", {"num_shards": plan.num_shards, "fingerprint": plan.fingerprint}
    )
    for (unit, index), sp, sh in zip(
        table[:, :2].tolist(), plan.split.tolist(), plan.shard.tolist(), strict=True
    ):
        yield (unit, index), (stages.SPLITS[sp], sh)


def _train_vocab(word_counts: dict[str, int], settings: DataSettings) -> list[str]:
    from bertjax.data.tokenizer import train_wordpiece_vocab_from_counts

    vocab = train_wordpiece_vocab_from_counts(Counter(word_counts), vocab_size=settings.vocab_size)
    if len(vocab) < settings.vocab_size:
        log.warning(
            "the corpus supports only %d of data.vocab_size=%d WordPiece tokens",
            len(vocab),
            settings.vocab_size,
        )
    return vocab


def _word_counts(item: tuple[Position, Document], do_lower_case: bool):
    return count_words(item[1], do_lower_case=do_lower_case).items()


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_shard(
    item: tuple[tuple[str, int], Iterable[tuple[Position, Document]]],
    *,
    vocab: list[str],
    plan_info: dict[str, Any],
    settings: DataSettings,
    seed: int,
    output_dir: str,
) -> dict[str, Any]:
    """Instances and records of one shard (its documents sorted by position), written."""
    (split, index), members = item
    docs = [doc for _, doc in sorted(members, key=lambda m: m[0])]
    tokenizer = WordPieceTokenizer(vocab, do_lower_case=settings.do_lower_case)
    records = stages.shard_records(
        docs, split=split, index=index, settings=settings, tokenizer=tokenizer, seed=seed
    )
    name = shards.shard_name(split, index, plan_info["num_shards"])
    digest = _with_local_path(output_dir, name, lambda path: stages.write_records(path, records))
    return stages.shard_result(split, index, plan_info["num_shards"], len(records), digest)


def _with_local_path(output_dir: str, name: str, write) -> Any:
    """Runs `write(local_path)` for `output_dir/name`: in place on a local filesystem, else in a
    temporary file copied up through Beam's filesystems (ArrayRecord writes local files only)."""
    from apache_beam.io.filesystems import FileSystems

    dest = FileSystems.join(output_dir, name)
    if is_local(dest):
        return write(dest)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, name)
        out = write(local)
        with open(local, "rb") as src, FileSystems.create(dest) as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    return out


def is_local(path: str) -> bool:
    """Whether `path` is on the local filesystem (no scheme, or file://)."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.get_scheme(path) in (None, "file")


def _write_bytes(path: str, data: bytes) -> None:
    """Writes a small file atomically where the filesystem allows (temp name, then rename)."""
    from apache_beam.io.filesystems import FileSystems

    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def _finalize(
    _,
    *,
    results: list[dict[str, Any]],
    stats: dict[str, int],
    vocab: list[str],
    plan_info: dict[str, Any],
    settings: DataSettings,
    seed: int,
    output_dir: str,
    engine: str,
) -> None:
    """vocab.txt, then metadata.json (last: it marks the directory complete)."""
    from apache_beam.io.filesystems import FileSystems

    tokenizer = WordPieceTokenizer(vocab, do_lower_case=settings.do_lower_case)
    _write_bytes(
        FileSystems.join(output_dir, shards.VOCAB), ("\n".join(vocab) + "\n").encode("utf-8")
    )
    meta = stages.build_metadata(
        settings,
        seed=seed,
        num_shards=plan_info["num_shards"],
        corpus_fingerprint=plan_info["fingerprint"],
        tokenizer=tokenizer,
        results=results,
        stats=CleaningStats(**stats),
        engine=engine,
    )
    _write_bytes(
        FileSystems.join(output_dir, shards.METADATA), json.dumps(meta, indent=2).encode("utf-8")
    )


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def prepare_beam(
    settings: DataSettings,
    *,
    output_dir: str,
    seed: int,
    num_shards: int,
    runner: str,
    pipeline_options: Sequence[str] = (),
) -> dict[str, Any]:
    """Writes a prepared directory with an Apache Beam pipeline; returns its metadata.

    Args:
      settings: `config.data` (`DataSettings`); source `embedded`, `text_files` or `tfds`.
      output_dir: a new directory on any filesystem Beam writes (local, gs://, ...).
      seed: the run's seed; num_shards: requested train (and eval) shards.
      runner: a Beam runner name (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner).
      pipeline_options: further Beam flags, e.g. ["--direct_num_workers=2",
        "--direct_running_mode=multi_processing"].

    Raises:
      ImportError: Apache Beam is not installed (says what to install).
      FileExistsError: `output_dir` already holds a prepared corpus.
    """
    from bertjax.data.prepare import check_request

    beam = _beam()
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    check_request(settings, num_shards)
    options = PipelineOptions([f"--runner={runner}", *pipeline_options])
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(
        options.get_all_options()
    )
    if unknown:  # Beam would only log and drop them: a mistyped worker count would go unseen
        raise ValueError(
            f"--beam_pipeline_options: unknown Beam option(s) {sorted(unknown)} "
            f"(from {' '.join(pipeline_options)!r})"
        )
    meta_path = FileSystems.join(output_dir, shards.METADATA)
    if FileSystems.exists(meta_path):
        raise FileExistsError(f"{output_dir} already holds a prepared corpus; choose a new one")
    if is_local(output_dir):
        os.makedirs(output_dir, exist_ok=True)
    fixed_vocab = None
    if settings.vocab_file:
        # Validated here, on the launcher, so a bad file fails before any worker starts.
        fixed_vocab = read_vocab_file(settings.vocab_file)
    elif settings.source == "tfds":
        raise ValueError("data.source='tfds' needs data.vocab_file (a BERT vocab.txt)")
    units = read_units(settings)

    s, fraction = settings, settings.eval_fraction
    with beam.Pipeline(options=options) as p:
        read = (
            p
            | "Units" >> beam.Create(units)
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadClean" >> beam.FlatMap(lambda u: read_unit(u, s))
        )
        docs = (
            read
            | "Docs" >> beam.Filter(lambda kv: kv[0] == "doc")
            | "DocValue" >> beam.Map(lambda kv: kv[1])
        )
        stat_parts = [
            read
            | "ReadStats" >> beam.Filter(lambda kv: kv[0] == "stats")
            | "StatsValue" >> beam.Values()
        ]
        if s.dedup_documents:
            kept = (
                docs
                | "DedupKey" >> beam.Map(lambda pd: (dedup_key(pd[1]), pd))
                | "Dedup" >> beam.CombinePerKey(_keep_first_fn())
                | "Firsts" >> beam.Values()
            )
            stat_parts.append(
                kept | "DupStats" >> beam.Map(lambda a: {"dropped_duplicate": a[2] - 1})
            )
            docs = kept | "Kept" >> beam.Map(lambda a: (a[0], a[1]))
        stat_parts.append(
            docs
            | "KeptStats"
            >> beam.Map(lambda pd: {"documents_kept": 1, "sentences_kept": len(pd[1])})
        )
        stats = (
            stat_parts
            | "AllStats" >> beam.Flatten()
            | "SumStats" >> beam.CombineGlobally(_sum_stats_fn())
        )

        plan = (
            docs
            | "Hash" >> beam.Map(lambda pd: (pd[0], document_hash(pd[1])))
            | "AllHashes" >> beam.CombineGlobally(_hash_table_fn())
            | "Plan"
            >> beam.FlatMap(_plan, fraction, num_shards).with_outputs("info", main="assign")
        )
        plan_info, assign = plan.info, plan.assign

        if fixed_vocab is not None:
            vocab = p | "Vocab" >> beam.Create([fixed_vocab])
        else:
            vocab = (
                docs
                | "CountWords" >> beam.FlatMap(_word_counts, s.do_lower_case)
                | "SumWords" >> beam.CombinePerKey(sum)
                | "WordCounts" >> beam.combiners.ToDict()
                | "TrainVocab" >> beam.Map(_train_vocab, s)
            )

        results = (
            {"doc": docs, "where": assign}
            | "Join" >> beam.CoGroupByKey()
            | "ByShard" >> beam.Map(lambda kv: (kv[1]["where"][0], (kv[0], kv[1]["doc"][0])))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards"
            >> beam.Map(
                _write_shard,
                vocab=beam.pvalue.AsSingleton(vocab),
                plan_info=beam.pvalue.AsSingleton(plan_info),
                settings=s,
                seed=seed,
                output_dir=output_dir,
            )
        )
        _ = (
            p
            | "Finalize" >> beam.Create([None])
            | "WriteMetadata"
            >> beam.Map(
                _finalize,
                results=beam.pvalue.AsList(results),
                stats=beam.pvalue.AsSingleton(stats),
                vocab=beam.pvalue.AsSingleton(vocab),
                plan_info=beam.pvalue.AsSingleton(plan_info),
                settings=s,
                seed=seed,
                output_dir=output_dir,
                engine=f"beam:{runner}",
            )
        )
    if not FileSystems.exists(meta_path):
        raise RuntimeError(f"the Beam pipeline finished without writing {meta_path}")
    with FileSystems.open(meta_path) as f:
        return json.loads(f.read().decode("utf-8"))
