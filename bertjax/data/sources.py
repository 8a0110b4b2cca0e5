"""Text sources: local files, TensorFlow Datasets, the embedded corpus. Each yields documents.

A document is a list of sentences. Local files come in two layouts:
  * "bert": google-research/bert's input format, one sentence per line, a blank line between
    documents (a new file also starts a new document);
  * "paragraphs": plain text, a blank line between paragraphs; each paragraph is one document and
    its sentences are split automatically (`bertjax.data.sentences`).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator

from bertjax.data.cleaning import CleaningStats, Document
from bertjax.data.sentences import split_sentences

log = logging.getLogger(__name__)

TEXT_FORMATS = ("bert", "paragraphs")
UNICODE_ERRORS = ("strict", "replace")
_GLOB_CHARS = frozenset("*?[")


class DataSourceError(ValueError):
    """Bad input data or data config; the message names the file, offset or config key."""


def expand_text_files(spec: str, key: str = "data.text_files") -> list[str]:
    """Paths named by a comma-separated list of paths and globs (sorted, order-preserving).

    Raises:
      DataSourceError: the spec is empty, a glob matches nothing, or a path is a directory.
      FileNotFoundError: a plain path does not exist.
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise DataSourceError(f"{key} is empty; give a path or glob (comma-separated allowed)")
    paths: list[str] = []
    for item in items:
        if _GLOB_CHARS & set(item):
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                raise DataSourceError(f"{key}: pattern {item!r} matches no file")
            paths.extend(m for m in matches if os.path.isfile(m))
        else:
            path = os.path.expanduser(item)
            if os.path.isdir(path):
                raise DataSourceError(f"{key}: {item!r} is a directory; use a glob like {item}/*")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{key}: file {item!r} does not exist")
            paths.append(path)
    # The same file named twice (a path and a glob) would duplicate its documents.
    return list(dict.fromkeys(paths))


def decode_bytes(data: bytes, *, where: str, unicode_errors: str, stats: CleaningStats) -> str:
    """UTF-8 text of `data`; bad bytes raise (naming `where` and the byte offset) or are counted.

    Raises:
      DataSourceError: invalid UTF-8 with unicode_errors="strict".
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if unicode_errors != "replace":
            raise DataSourceError(
                f"{where}: invalid UTF-8 at byte offset {e.start} "
                f"(bytes {data[e.start : e.end]!r}); "
                "fix the file or set data.unicode_errors='replace' to replace bad bytes (counted)"
            ) from e
        text = data.decode("utf-8", errors="replace")
        # U+FFFD characters that were genuinely in the file are not replacements.
        n = text.count("\ufffd") - data.count("\ufffd".encode())
        stats.unicode_replacements += n
        log.warning(
            "%s: replaced %d undecodable byte sequence(s) with U+FFFD, first at byte offset %d",
            where,
            n,
            e.start,
        )
        return text


def read_text_file(
    path: str, *, text_format: str, unicode_errors: str, stats: CleaningStats
) -> list[Document]:
    """Documents of one local file (see the module docstring for the layouts).

    An empty file yields no documents and is counted in `stats.empty_files` with a warning.
    """
    with open(path, "rb") as f:
        data = f.read()
    return documents_from_bytes(
        data, where=path, text_format=text_format, unicode_errors=unicode_errors, stats=stats
    )


def documents_from_bytes(
    data: bytes, *, where: str, text_format: str, unicode_errors: str, stats: CleaningStats
) -> list[Document]:
    """Documents of one file's bytes (`where` names it in errors); counts the file as read.

    Shared by local reading and the Beam pipeline, which reads through Beam's filesystems.
    """
    if text_format not in TEXT_FORMATS:
        raise DataSourceError(
            f"data.text_format must be one of {TEXT_FORMATS}, got {text_format!r}"
        )
    stats.files_read += 1
    text = decode_bytes(data, where=where, unicode_errors=unicode_errors, stats=stats)
    if not text.strip():
        stats.empty_files += 1
        log.warning("%s is empty: it contributes no documents", where)
        return []
    return list(_documents_from_text(text, text_format))


def _documents_from_text(text: str, text_format: str) -> Iterator[Document]:
    block: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            block.append(line)
            continue
        if block:
            yield _block_to_document(block, text_format)
            block = []
    if block:
        yield _block_to_document(block, text_format)


def _block_to_document(lines: list[str], text_format: str) -> Document:
    if text_format == "bert":
        return lines
    return split_sentences(" ".join(lines))


def read_text_files(
    spec: str, *, text_format: str, unicode_errors: str, stats: CleaningStats
) -> list[Document]:
    """Documents of every file named by `spec` (`data.text_files`), in file order."""
    if unicode_errors not in UNICODE_ERRORS:
        raise DataSourceError(
            f"data.unicode_errors must be one of {UNICODE_ERRORS}, got {unicode_errors!r}"
        )
    docs: list[Document] = []
    for path in expand_text_files(spec):
        docs.extend(
            read_text_file(
                path, text_format=text_format, unicode_errors=unicode_errors, stats=stats
            )
        )
    return docs


def tfds_documents(
    name: str,
    *,
    split: str,
    data_dir: str | None,
    text_key: str,
    unicode_errors: str,
    process_index: int,
    process_count: int,
    stats: CleaningStats,
) -> list[Document]:
    """Documents of this host's shard (examples `process_index::process_count`) of a TFDS dataset.

    Read through `tfds.data_source(..., file_format="array_record")`, which needs no TensorFlow;
    the dataset must already be prepared in `data_dir` (nothing is downloaded here). Each example's
    `text_key` field is one document; its lines are paragraphs, split into sentences.
    """
    import tensorflow_datasets as tfds

    if not name:
        raise DataSourceError("data.tfds_name is empty; set it, e.g. 'wikipedia/20230601.en'")
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # tfds raises several types (not found, not prepared, bad split)
        raise DataSourceError(
            f"data.tfds_name={name!r} split={split!r}: cannot open it as an array_record data "
            f"source ({type(e).__name__}: {e}); prepare it first with `tfds build "
            f"--file_format=array_record`"
        ) from e
    docs: list[Document] = []
    # One read per example: simple, and works with every data source tfds (or its mock) returns.
    for i in range(process_index, len(source), process_count):
        example = source[i]
        if text_key not in example:
            raise DataSourceError(
                f"tfds {name}[{split}] example {i} has no field data.tfds_text_key="
                f"{text_key!r}; fields: {sorted(example)}"
            )
        docs.append(
            tfds_example_document(
                example[text_key],
                where=f"tfds {name}[{split}] example {i} field {text_key!r}",
                unicode_errors=unicode_errors,
                stats=stats,
            )
        )
    return docs


def tfds_example_document(
    value: bytes | str, *, where: str, unicode_errors: str, stats: CleaningStats
) -> Document:
    """One TFDS example's text field as a document: its lines are paragraphs, split into
    sentences (shared by the online pipeline, `prepare` and its Beam pipeline)."""
    text = (
        decode_bytes(value, where=where, unicode_errors=unicode_errors, stats=stats)
        if isinstance(value, bytes)
        else str(value)
    )
    doc: Document = []
    for paragraph in text.split("\n"):
        doc.extend(split_sentences(paragraph))
    return doc
