"""KV-cache generation: cache == full forward, greedy == transformers' generate, sampling sets."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import generate as generate_lib
from bertjax import models
from bertjax.convert import from_hf
from bertjax.generate import (
    _cache_lengths,
    decode_params,
    first_argmax,
    generate,
    init_cache,
    prepare_params,
    sample_logits,
)
from bertjax.models.layers import grow_cache

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 97


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    """A random HF GPT-2 (odd sizes, perturbed weights so that greedy paths are not trivial)
    and the same model converted to bertjax: (hf_model, model, params)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=44, n_layer=2, n_head=4, n_inner=72
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    directory = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(directory)
    cfg, params = from_hf(directory)
    return hf, models.build(cfg), params


PROMPTS = [[5, 17, 3, 88, 41], [9] * 11, [60], [1, 2, 3, 4, 5, 6, 7, 8]]
NEW = 16  # one max_new_tokens everywhere, so that the tests share compilations


def hf_greedy(hf, prompts, max_new_tokens, eos_id=None):
    """transformers' greedy generate on left-padded prompts; returns each row's new tokens."""
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    with torch.no_grad():
        out = hf.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=0 if eos_id is None else eos_id,
        ).numpy()
    rows = []
    for row in out[:, width:]:
        if eos_id is not None and eos_id in row:
            row = row[: list(row).index(eos_id) + 1]
        rows.append(row)
    return rows


def test_greedy_matches_transformers_token_for_token(hf_and_ours):
    hf, model, params = hf_and_ours
    ours = generate(model, params, PROMPTS, NEW, temperature=0.0)
    ref = hf_greedy(hf, PROMPTS, NEW)
    for prompt, out, expected in zip(PROMPTS, ours, ref, strict=True):
        np.testing.assert_array_equal(out[: len(prompt)], prompt)
        np.testing.assert_array_equal(out[len(prompt) :], expected)


def test_greedy_matches_transformers_as_the_cache_grows(hf_and_ours):
    """A generation long enough to decode with two cache sizes (48 slots, then 64)."""
    hf, model, params = hf_and_ours
    prompts = [[5, 17, 3, 88, 41], [9] * 11]
    assert _cache_lengths(16, 48) == [48, 64]  # the prompts' block is 16 wide
    ours = generate(model, params, prompts, 48, temperature=0.0)
    for prompt, out, expected in zip(prompts, ours, hf_greedy(hf, prompts, 48), strict=True):
        np.testing.assert_array_equal(out[len(prompt) :], expected)


def test_cache_lengths_double_up_to_the_whole_generation():
    assert _cache_lengths(16, 16) == [32]  # already within the first size
    assert _cache_lengths(32, 64) == [64, 96]
    assert _cache_lengths(1, 1000) == [33, 66, 132, 264, 528, 1001]
    assert _cache_lengths(100, 1) == [101]
    for width, new in [(1, 1), (7, 300), (64, 64), (200, 800)]:
        lengths = _cache_lengths(width, new)
        assert lengths[-1] == width + new and lengths == sorted(set(lengths))
        assert all(b <= 2 * a for a, b in zip(lengths[:-1], lengths[1:], strict=True))


def test_grow_cache_refuses_to_shrink(hf_and_ours):
    _, model, _ = hf_and_ours
    with pytest.raises(
        ValueError, match=r"\['cached_key'\] already has 12 slots, more than max_length=8"
    ):
        grow_cache(init_cache(model, 2, 12), 8)


def test_stops_at_end_of_text_like_transformers(hf_and_ours):
    hf, model, params = hf_and_ours
    free = generate(model, params, PROMPTS, NEW, temperature=0.0)
    new0 = list(free[0][len(PROMPTS[0]) :])
    eos = int(new0[4])  # a token row 0 really emits (at its 5th step, maybe earlier too)
    stop = new0.index(eos) + 1
    assert stop < NEW
    ours = generate(model, params, PROMPTS, NEW, temperature=0.0, eos_id=eos)
    ref = hf_greedy(hf, PROMPTS, NEW, eos_id=eos)
    for prompt, out, expected in zip(PROMPTS, ours, ref, strict=True):
        np.testing.assert_array_equal(out[len(prompt) :], expected)
    assert len(ours[0]) == len(PROMPTS[0]) + stop and ours[0][-1] == eos
    # The 2-D form pads after the end of text.
    block = generate(
        model, params, np.array([PROMPTS[0]]), NEW, temperature=0.0, eos_id=eos, pad_id=0
    )
    assert block.shape == (1, len(PROMPTS[0]) + NEW)
    np.testing.assert_array_equal(block[0, : len(ours[0])], ours[0])
    assert (block[0, len(ours[0]) :] == 0).all()


def test_cached_decoding_gives_the_full_forward_logits(hf_and_ours):
    """Ragged prompts prefilled as one right-padded block, then one token at a time, the cache
    grown (`grow_cache`) half-way as `generate` grows it."""
    _, model, params = hf_and_ours
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, VOCAB, n) for n in (14, 9, 17)]
    prompt_lens = np.array([6, 3, 8], np.int32)
    steps = 6
    decoder = model.clone(decode=True)
    cache = init_cache(model, 3, 8 + 2)
    dec_params = decode_params(model, params)

    @jax.jit
    def step(cache, ids, lengths=None):
        out, mutated = decoder.apply(
            {"params": dec_params, "cache": cache},
            {"input_ids": ids},
            decode_lengths=lengths,
            mutable=["cache"],
        )
        return out["logits"], mutated["cache"]

    block = np.zeros((3, 8), np.int32)
    for i, s in enumerate(seqs):
        block[i, : prompt_lens[i]] = s[: prompt_lens[i]]
    logits, cache = step(cache, block, jnp.asarray(prompt_lens))
    cached = [[logits[i, : prompt_lens[i]]] for i in range(3)]
    for t in range(steps):
        if t == 2:  # full: 8 prompt slots + 2 steps
            cache = grow_cache(cache, 8 + steps)
            assert cache["layer_0"]["attention"]["cached_key"].shape[2] == 8 + steps
        step_ids = np.array([[s[prompt_lens[i] + t]] for i, s in enumerate(seqs)], np.int32)
        logits, cache = step(cache, step_ids)
        for i in range(3):
            cached[i].append(logits[i])
    # The full forward pass of each row (right-padded into one block: causal, so the padding
    # after a row's tokens cannot change their logits).
    full_block = np.zeros((3, 17), np.int32)
    for i, s in enumerate(seqs):
        full_block[i, : len(s)] = s
    full = jax.jit(model.apply)({"params": params}, {"input_ids": full_block})["logits"]
    for i in range(3):
        n = prompt_lens[i] + steps
        np.testing.assert_allclose(np.concatenate(cached[i]), full[i, :n], atol=1e-5)


def test_compiles_once_per_shape_not_per_token(hf_and_ours):
    _, model, params = hf_and_ours
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9] * 13, [9, 9]]
    generate(model, params, prompts, NEW, temperature=0.0)
    size = generate_lib._generate_block._cache_size()
    # Other prompts whose lengths fall in the same bucket (at most 16), other tokens: the same
    # compiled function. Likewise another temperature and seed once sampling is compiled.
    generate(model, params, [[4, 5, 6, 7, 8], [1], [2] * 16, [3] * 9], NEW, temperature=0.0)
    assert generate_lib._generate_block._cache_size() == size
    generate(model, params, prompts, NEW, temperature=0.7, rng=1)
    size = generate_lib._generate_block._cache_size()
    generate(model, params, prompts[::-1], NEW, temperature=1.3, rng=2)
    assert generate_lib._generate_block._cache_size() == size


def test_sampling_is_reproducible_and_top_k_one_is_greedy(hf_and_ours):
    _, model, params = hf_and_ours
    a = generate(model, params, PROMPTS, NEW, temperature=1.0, rng=jax.random.key(3))
    b = generate(model, params, PROMPTS, NEW, temperature=1.0, rng=jax.random.key(3))
    c = generate(model, params, PROMPTS, NEW, temperature=1.0, rng=jax.random.key(4))
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=True))
    greedy = generate(model, params, PROMPTS, NEW, temperature=0.0)
    top1 = generate(model, params, PROMPTS, NEW, temperature=1.0, top_k=1, rng=5)
    assert all((x == y).all() for x, y in zip(greedy, top1, strict=True))


_sample = jax.jit(sample_logits, static_argnames=("greedy", "top_k", "use_top_p"))


def _draws(logits, n=4000, temperature=1.0, **kwargs):
    """n samples from each row of `logits` (rows repeated, one jitted call)."""
    tiled = jnp.repeat(jnp.asarray(logits, jnp.float32), n, axis=0)
    out = _sample(tiled, jax.random.key(0), temperature, **kwargs)
    return np.asarray(out).reshape(len(logits), n)


def test_top_k_never_samples_outside_the_k_most_likely():
    logits = np.random.default_rng(0).normal(size=(3, 50)) * 2
    for k in (1, 5, 17):
        draws = _draws(logits, top_k=k)
        for row, d in zip(logits, draws, strict=True):
            allowed = set(np.argsort(-row)[:k])
            assert set(d) <= allowed
            assert len(set(d)) == min(k, len(set(d))) and (k == 1 or len(set(d)) > 1)


def test_top_p_never_samples_outside_the_nucleus():
    probs = np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    logits = np.log(probs)
    # p = 0.6: {0.5, 0.3} is the smallest set reaching 0.6.
    draws = _draws(logits, top_p=0.6, use_top_p=True)
    assert set(draws[0]) == {0, 1} and set(draws[1]) == {3, 2}
    # p = 0.5: the top token alone has mass 0.5 >= p.
    assert set(_draws(logits, top_p=0.5, use_top_p=True)[0]) == {0}
    # The kept tokens keep their relative odds (0.5 : 0.3).
    assert abs((draws[0] == 0).mean() - 0.5 / 0.8) < 0.03
    # Random logits: samples always inside the nucleus computed independently in numpy.
    logits = np.random.default_rng(1).normal(size=(4, 40)) * 3
    for p in (0.3, 0.8, 0.95):
        draws = _draws(logits, top_p=p, use_top_p=True, temperature=0.7)
        for row, d in zip(logits, draws, strict=True):
            q = np.exp((row - row.max()) / 0.7)
            q /= q.sum()
            order = np.argsort(-q)
            size = int(np.searchsorted(np.cumsum(q[order]), p) + 1)
            assert set(d) <= set(order[:size])


def test_top_k_and_top_p_together():
    logits = np.random.default_rng(2).normal(size=(2, 30)) * 2
    draws = _draws(logits, top_k=4, top_p=0.9, use_top_p=True)
    for row, d in zip(logits, draws, strict=True):
        assert set(d) <= set(np.argsort(-row)[:4])


def test_bad_arguments_are_clear_errors(hf_and_ours):
    _, model, params = hf_and_ours
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, params, [[1] * 60], 10)
    with pytest.raises(ValueError, match="outside"):
        generate(model, params, [[1, VOCAB]], 3)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, params, [[1]], 3, top_p=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, params, [[1], []], 3)


def test_bfloat16_compute_generates_from_float32_params(hf_and_ours):
    """Params are cast to the compute dtype once, before the loop; the first greedy tokens hold."""
    _, model, params = hf_and_ours
    bf16 = models.build(model.cfg.replace(dtype="bfloat16"))
    fast = generate(bf16, params, PROMPTS, NEW, temperature=0.0)
    exact = generate(model, params, PROMPTS, NEW, temperature=0.0)
    for p, a, b in zip(PROMPTS, fast, exact, strict=True):
        assert a[len(p)] == b[len(p)]


@pytest.mark.parametrize("vocab", [50, 1024, 3000])
def test_first_argmax_is_argmax(vocab):
    """Blocks of 1024 (and a short last block): ties go to the first index, as jnp.argmax."""
    logits = np.random.default_rng(vocab).normal(size=(6, vocab)).astype(np.float32)
    logits[1, :] = 0.5  # all tied: index 0
    logits[2, [7 % vocab, vocab - 2]] = 9.0  # a tie across blocks: the first
    logits[3, vocab - 1] = 9.0  # the very last id (in the short last block)
    logits[4, [vocab - 3, vocab - 1]] = 9.0  # a tie inside the last block
    got = np.asarray(jax.jit(first_argmax)(logits))
    np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
    small_blocks = np.asarray(jax.jit(first_argmax, static_argnums=1)(logits, 16))
    np.testing.assert_array_equal(small_blocks, np.argmax(logits, axis=-1))


def test_prepared_params_generate_the_same_tokens(hf_and_ours):
    """prepare_params once, then generate: the same as passing the float32 params each time."""
    _, model, params = hf_and_ours
    prepared = prepare_params(model, params)
    leaves = jax.tree_util.tree_leaves_with_path(prepared.tree)
    kernel = dict((jax.tree_util.keystr(k), v) for k, v in leaves)
    # The decode layout: every dense kernel [out, in], e.g. the attention output [embed, heads*kv].
    assert kernel["['layer_0']['attention']['out']['kernel']"].shape == (44, 44)
    assert kernel["['layer_0']['mlp']['wi']['kernel']"].shape == (72, 44)
    for a, b in zip(
        generate(model, prepared, PROMPTS, NEW, temperature=0.0),
        generate(model, params, PROMPTS, NEW, temperature=0.0),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    bf16 = models.build(model.cfg.replace(dtype="bfloat16"))
    with pytest.raises(ValueError, match="dtype='float32', not 'bfloat16'"):
        generate(bf16, prepared, PROMPTS, NEW)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's lowering")
def test_a_decode_step_writes_the_cache_in_place():
    """bf16 decoding, compiled for this CPU: no scatter, and nothing converts a whole cache.

    Per-row write positions compile to a scatter, which XLA:CPU ran on a float32 copy of each
    bf16 cache (85 of 150 ms per GPT-2 step at batch 32), and a bf16 cache read by the
    attention product is converted whole at every step; both show in the HLO.
    """
    cfg = models.get_config("gpt_tiny", vocab_size=VOCAB, dtype="bfloat16")
    model = models.build(cfg)
    params = jax.jit(model.init)(jax.random.key(0), {"input_ids": jnp.zeros((1, 4), jnp.int32)})
    tree = prepare_params(model, params["params"]).tree
    batch, width, new = 3, 8, 40
    lengths = _cache_lengths(width, new)
    assert len(lengths) == 2  # both decode loops checked
    hlo = (
        generate_lib._generate_block.lower(
            model,
            tree,
            jnp.zeros((batch, width), jnp.int32),
            jnp.array([8, 3, 5], jnp.int32),
            jax.random.key(0),
            jnp.float32(1.0),
            jnp.float32(1.0),
            max_new_tokens=new,
            greedy=True,
            top_k=0,
            use_top_p=False,
            eos_id=-1,
            pad_id=0,
        )
        .compile()
        .as_text()
    )
    cache_shapes = {f"[{batch},{cfg.num_heads},{n},{cfg.head_dim}]" for n in lengths}
    assert "dynamic-update-slice" in hlo
    assert " scatter(" not in hlo
    converts = []  # instructions (or fusions) that produce a cache-shaped array by converting
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \w+(\[[\d,]*\])\S* ([\w\-]+)\(", line)
        if m and m.group(2) in cache_shapes and "convert" in m.group(1) + m.group(3):
            converts.append(line.strip()[:120])
    assert converts == []
