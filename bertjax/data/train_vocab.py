r"""Train a WordPiece vocabulary (`vocab.txt`) from text files.

    python -m bertjax.data.train_vocab --input='corpus/*.txt' --vocab_size=30522 \
        --output=vocab.txt [--text_format=bert|paragraphs] [--nodo_lower_case]

The text is read and cleaned exactly as the training pipeline does (same sources, same cleaning
counts printed), so the vocabulary matches what training will tokenize. `--input=embedded` trains
on the embedded corpus. The result is deterministic for the same input.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from bertjax.data import embedded_corpus, pipeline, sources
from bertjax.data.cleaning import CleaningStats, clean_documents
from bertjax.data.tokenizer import WordPieceTokenizer, train_wordpiece_vocab

_INPUT = flags.DEFINE_string(
    "input",
    None,
    "Text files: path or glob, comma-separated allowed; 'embedded' for the embedded corpus.",
)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write vocab.txt.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 30522, "Vocabulary size (specials included).")
_TEXT_FORMAT = flags.DEFINE_enum(
    "text_format", "bert", list(sources.TEXT_FORMATS), "Layout of the input files."
)
_LOWER = flags.DEFINE_bool("do_lower_case", True, "Uncased (lower-case, strip accents) or cased.")
_MIN_FREQ = flags.DEFINE_integer("min_frequency", 2, "Pieces seen fewer times are not kept.")
_UNICODE_ERRORS = flags.DEFINE_enum(
    "unicode_errors", "strict", list(sources.UNICODE_ERRORS), "Invalid UTF-8: fail or replace."
)
_MIN_CHARS = flags.DEFINE_integer("min_document_chars", 20, "Shorter documents are dropped.")


def main(argv: Sequence[str]) -> None:
    del argv
    stats = CleaningStats()
    if _INPUT.value == "embedded":
        raw = [list(d) for d in embedded_corpus.embedded_documents()]
    else:
        raw = sources.read_text_files(
            _INPUT.value,
            text_format=_TEXT_FORMAT.value,
            unicode_errors=_UNICODE_ERRORS.value,
            stats=stats,
        )
    docs = list(
        clean_documents(raw, min_document_chars=_MIN_CHARS.value, dedup_documents=True, stats=stats)
    )
    if not docs:
        raise app.UsageError(f"--input={_INPUT.value!r}: no documents left ({stats.summary()})")
    vocab = train_wordpiece_vocab(
        (s for d in docs for s in d),
        vocab_size=_VOCAB_SIZE.value,
        do_lower_case=_LOWER.value,
        min_frequency=_MIN_FREQ.value,
    )
    WordPieceTokenizer(vocab, do_lower_case=_LOWER.value).save_vocab(_OUTPUT.value)
    print(f"cleaning: {stats.summary()}")
    print(
        f"wrote {len(vocab)} tokens to {_OUTPUT.value} (asked for {_VOCAB_SIZE.value}; a small "
        f"corpus may support fewer); corpus sha256 {pipeline.documents_fingerprint(docs)[:16]}"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["input", "output"])
    app.run(main)
