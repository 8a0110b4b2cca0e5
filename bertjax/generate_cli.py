"""Generate text from a GPT-2: a bertjax run directory or a Hugging Face GPT-2 directory.

    python -m bertjax.generate_cli --checkpoint=/tmp/gpt_tiny --prompt="The import statement"
    python -m bertjax.generate_cli --checkpoint=path/to/hf_gpt2 --prompt="Hello" \
        --prompt="Once upon a time" --max_new_tokens=40 --temperature=0.8 --top_p=0.95

A Hugging Face directory holds config.json + model.safetensors and its tokenizer (tokenizer.json,
or vocab.json + merges.txt). A bertjax run directory (`--workdir` of `bertjax.main` with the
causal_lm task) is loaded from its run.json (`bertjax.inference.load_run`; older runs'
model_config.json + tokenizer/ too); its best checkpoint is used when it has one, else its latest.
`--tokenizer=DIR` overrides where the tokenizer is read from.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags


def _define_flags() -> None:
    """The CLI's flags, defined only when it runs as a program: importing `load_model` (tests,
    the server) must not claim flag names such as --checkpoint that other CLIs use too."""
    flags.DEFINE_string(
        "checkpoint", None, "bertjax run directory or Hugging Face GPT-2 directory.", required=True
    )
    flags.DEFINE_multi_string("prompt", [], "Prompt text (repeat the flag for a batch).")
    flags.DEFINE_integer("max_new_tokens", 50, "Tokens to generate per prompt.")
    flags.DEFINE_float("temperature", 0.8, "0 = greedy decoding.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string("tokenizer", None, "Directory of the tokenizer (overrides).")
    flags.DEFINE_enum(
        "dtype",
        "float32",
        ["float32", "bfloat16"],
        "Compute dtype (the run may have trained in bf16).",
    )
    flags.DEFINE_bool(
        "prepend_eot",
        True,
        "Start each prompt with <|endoftext|>, as every document starts in training (GPT-2 "
        "convention); it is not printed.",
    )


def load_model(checkpoint: str, tokenizer_dir: str | None = None, dtype: str | None = None):
    """(model, params, tokenizer) of a bertjax run directory or a Hugging Face GPT-2 directory.

    dtype: compute dtype to use instead of the checkpoint's (e.g. float32 on a CPU).
    """
    from bertjax import models
    from bertjax.data.bpe import ByteBPETokenizer

    path = pathlib.Path(checkpoint)
    if (path / "config.json").is_file():  # Hugging Face layout
        from bertjax.convert import from_hf

        cfg, params = from_hf(path)
        if cfg.model_type != "gpt2":
            raise ValueError(f"{checkpoint}: model_type {cfg.model_type!r}; generation needs GPT-2")
        if dtype is not None:
            cfg = cfg.replace(dtype=dtype)
        tokenizer = ByteBPETokenizer.from_dir(str(tokenizer_dir or path))
    else:  # a bertjax run directory: run.json (or an older run's model_config.json)
        from bertjax.inference import load_run, read_manifest

        manifest = read_manifest(path)
        if manifest["model"].get("model_type") != "gpt2":
            raise ValueError(
                f"{checkpoint}: run.json's model_type {manifest['model'].get('model_type')!r}; "
                "generation needs a GPT-2 run (task causal_lm)"
            )
        run = load_run(path, dtype=dtype)
        cfg, params = run.model_config, run.params
        tokenizer = run.tokenizer
        if tokenizer_dir:
            tokenizer = ByteBPETokenizer.from_dir(str(tokenizer_dir))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}"
        )
    return models.build(cfg), params, tokenizer


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS.prompt:
        raise app.UsageError("give at least one --prompt")
    from bertjax.generate import generate

    model, params, tokenizer = load_model(FLAGS.checkpoint, FLAGS.tokenizer, FLAGS.dtype)
    prefix = [tokenizer.eot_id] if FLAGS.prepend_eot else []
    prompts = [prefix + tokenizer.encode(p).tolist() for p in FLAGS.prompt]
    outputs = generate(
        model,
        params,
        prompts,
        FLAGS.max_new_tokens,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        top_p=FLAGS.top_p,
        rng=FLAGS.seed,
        eos_id=tokenizer.eot_id,
    )
    for text, prompt, out in zip(FLAGS.prompt, prompts, outputs, strict=True):
        continuation = tokenizer.decode(out[len(prompt) :], skip_special_tokens=True)
        sys.stdout.write(f"=== {text}\n{text}{continuation}\n")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
