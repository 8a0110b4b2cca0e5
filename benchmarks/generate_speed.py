r"""Generation speed: bertjax KV-cache `generate` vs transformers' PyTorch `generate`, same model.

    python benchmarks/generate_speed.py [--presets=gpt2,gpt_tiny] [--batch_sizes=1,32]
        [--prompt_len=32] [--new_tokens=64] [--repeats=5] [--dtypes=float32,bfloat16]

A GPT2LMHeadModel with random weights is built offline from a GPT2Config of each preset's sizes
(GPT-2's 50,257-token vocabulary), saved, and converted with `bertjax.convert.from_hf`; both
sides then decode greedily from the same prompts for exactly `new_tokens` tokens (no end-of-text
stop), transformers with its default dynamic KV cache; in float32, and in bfloat16 when asked
(bertjax: bfloat16 compute with float32 logits; transformers: the model cast with
`.to(torch.bfloat16)`; the two may then pick different tokens after a near-tie). bertjax's
parameters are prepared once (`prepare_params`: cast to the compute dtype, kernels in the decode
layout), as transformers' bfloat16 copy is made once, both outside the timing. The two are
timed in alternation (after one untimed warm-up each, which for bertjax includes compilation)
and the median of `repeats` runs is reported, since a shared machine is noisy. Throughput = new
tokens per second over the whole batch, prefill included. The first row's tokens of the two
sides are compared as a sanity check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bertjax import models  # noqa: E402
from bertjax.convert import from_hf  # noqa: E402
from bertjax.generate import generate, prepare_params  # noqa: E402


def hf_model(preset: str, directory: str):
    """A random transformers GPT2LMHeadModel with the sizes of a bertjax preset, saved."""
    import torch
    import transformers

    cfg = models.get_config(preset)
    config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_position_embeddings,
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_inner=cfg.intermediate_size,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)
    model.generation_config.eos_token_id = None  # always exactly new_tokens tokens
    model.generation_config.pad_token_id = 0
    return model


def time_hf(model, prompts: np.ndarray, new_tokens: int) -> tuple[float, np.ndarray]:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    return time.perf_counter() - start, out.numpy()


def time_ours(model, params, prompts: np.ndarray, new_tokens: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = generate(model, params, prompts, new_tokens, temperature=0.0)
    return time.perf_counter() - start, out


def hf_model_cast(model, dtype: str):
    """A copy of the transformers model with its weights cast to `dtype`."""
    import copy

    import torch

    return copy.deepcopy(model).to(getattr(torch, dtype))


def compare(model, params, hf, batch: int, args, vocab_size: int) -> tuple[float, float, bool]:
    """(bertjax tokens/s, transformers tokens/s, row 0 equal), timed in alternation."""
    prompts = np.random.default_rng(batch).integers(0, vocab_size, (batch, args.prompt_len))
    prompts = prompts.astype(np.int32)
    _, ours_out = time_ours(model, params, prompts, args.new_tokens)  # compiles
    _, hf_out = time_hf(hf, prompts, args.new_tokens)
    same = bool((ours_out[0] == hf_out[0]).all())
    ours_t, hf_t = [], []
    for r in range(args.repeats):
        # Alternate which goes first, so that drifts in machine load hit both alike.
        order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
        for who in order:
            if who == "ours":
                ours_t.append(time_ours(model, params, prompts, args.new_tokens)[0])
            else:
                hf_t.append(time_hf(hf, prompts, args.new_tokens)[0])
    tokens = batch * args.new_tokens
    return tokens / statistics.median(ours_t), tokens / statistics.median(hf_t), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="gpt2,gpt_tiny")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="float32")
    args = parser.parse_args()

    import torch
    import transformers

    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"{os.cpu_count()} CPUs; prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, "
        f"greedy, median of {args.repeats}"
    )
    rows = []
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as directory:
            hf32 = hf_model(preset, directory)
            cfg, params = from_hf(directory)
        params = jax.device_put(params)
        for dtype in args.dtypes.split(","):
            model = models.build(cfg.replace(dtype=dtype))
            prepared = prepare_params(model, params)
            hf = hf32 if dtype == "float32" else hf_model_cast(hf32, dtype)
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                result = compare(model, prepared, hf, batch, args, cfg.vocab_size)
                rows.append((preset, dtype, batch, *result))
                print(f"  {preset} {dtype} batch {batch}: done", file=sys.stderr, flush=True)

    print()
    print(
        "| model | dtype | batch | bertjax tokens/s | transformers tokens/s | ratio "
        "| greedy row 0 equal |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for preset, dtype, batch, ours_rate, hf_rate, same in rows:
        print(
            f"| {preset} | {dtype} | {batch} | {ours_rate:,.0f} | {hf_rate:,.0f} | "
            f"{ours_rate / hf_rate:.2f}x | {'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
