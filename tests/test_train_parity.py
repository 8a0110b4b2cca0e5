"""Training-step parity with transformers: the same small BERT, batches and AdamW recipe.

Beside the logit-parity tests (tests/test_convert.py), which compare deterministic forward
passes, these compare what fine-tuning and pretraining actually do: 20 optimizer steps of
bertjax (the model in train mode, `bertjax.optim.build`: AdamW with BERT's weight-decay mask,
global-norm clipping, linear warmup + decay) against transformers' model in train mode with
`torch.optim.AdamW` (decay off for biases and LayerNorm weights, as transformers' Trainer),
`clip_grad_norm_` and `get_linear_schedule_with_warmup`, from one converted checkpoint.

The heads: sequence classification, pretraining (MLM + NSP), token classification (NER), whose
loss is the NER task's own (`bertjax.tasks.ner.loss_fn`: the mean over labelled tokens), and
question answering (SQuAD), whose loss is the SQuAD task's (`bertjax.tasks.squad.loss_fn`:
(CE(start) + CE(end)) / 2 over every position, padding included, as transformers').
Dropout off: the two loss curves agree step by step to 1e-4 relative (float32). Dropout on:
the masks differ, so the mean loss curves over several seeds are compared, within the spread
of the seeds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertjax import models, optim
from bertjax.convert import from_hf
from bertjax.tasks import ner, squad

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

STEPS, BATCH, LENGTH, VOCAB = 20, 8, 16, 120
TAGS = 5  # token classification: tag ids 0..4, -100 = not scored (padding, later subwords)
HF_CLASSES = {
    "classification": "BertForSequenceClassification",
    "pretraining": "BertForPreTraining",
    "token_classification": "BertForTokenClassification",
    "question_answering": "BertForQuestionAnswering",
}
HEADS = list(HF_CLASSES)
RECIPE = dict(lr=1e-3, warmup=2, weight_decay=0.01, eps=1e-6, clip=1.0)
HF_SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=32,
    type_vocab_size=2,
)


def _batches(head: str) -> list[dict[str, np.ndarray]]:
    """STEPS fixed batches: right-padded rows, two segments, labels for the head."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(STEPS):
        ids = rng.integers(5, VOCAB, (BATCH, LENGTH)).astype(np.int32)
        lengths = rng.integers(LENGTH // 2, LENGTH + 1, BATCH)
        mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
        types = (np.arange(LENGTH)[None, :] >= lengths[:, None] // 2).astype(np.int32) * mask
        ids = ids * mask
        batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
        if head == "classification":
            # Learnable from the first word: whether its id is under 60.
            batch["labels"] = (ids[:, 1] < 60).astype(np.int32)
        elif head == "token_classification":
            # A token's tag from its id; a third of the tokens unscored, as later subwords are.
            tags = np.where(rng.random((BATCH, LENGTH)) < 0.33, -100, ids % TAGS)
            batch["labels"] = np.where(mask == 1, tags, -100).astype(np.int32)
        elif head == "question_answering":
            # An answer span inside each row's real tokens, learnable from the ids around it.
            start = rng.integers(1, lengths - 1)
            batch["start_positions"] = start.astype(np.int32)
            batch["end_positions"] = np.minimum(start + rng.integers(0, 3, BATCH), lengths - 1)
            batch["end_positions"] = batch["end_positions"].astype(np.int32)
        else:
            labels = np.where(rng.random((BATCH, LENGTH)) < 0.2, ids, -100) * mask
            labels[mask == 0] = -100
            labels[:, 0] = ids[:, 0]  # at least one target per row
            batch["mlm_labels"] = labels.astype(np.int32)
            batch["nsp_labels"] = rng.integers(0, 2, BATCH).astype(np.int32)
        out.append(batch)
    return out


def _hf_model(head: str, dropout: float, directory):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        **HF_SIZES,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=TAGS if head == "token_classification" else 2,
        attn_implementation="eager",
    )
    model = getattr(transformers, HF_CLASSES[head])(config)
    model.save_pretrained(directory)
    return model


def _bertjax_loss(model, params, batch, rng, head: str) -> jax.Array:
    if head in ("token_classification", "question_answering"):  # the task's loss, as it trains
        weights = jnp.ones(batch["input_ids"].shape[0], jnp.float32)
        task_loss = ner.loss_fn if head == "token_classification" else squad.loss_fn
        return task_loss(None, model, params, {**batch, "weights": weights}, rng, rng is not None)[
            0
        ]
    rngs = {"dropout": rng} if rng is not None else None
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    out = model.apply({"params": params}, inputs, train=rng is not None, rngs=rngs)
    if head == "classification":
        return optax.softmax_cross_entropy_with_integer_labels(
            out["logits"], batch["labels"]
        ).mean()
    labels = batch["mlm_labels"]
    real = labels >= 0
    token = optax.softmax_cross_entropy_with_integer_labels(
        out["mlm_logits"], jnp.where(real, labels, 0)
    )
    mlm = jnp.sum(token * real) / jnp.sum(real)
    nsp = optax.softmax_cross_entropy_with_integer_labels(
        out["nsp_logits"], batch["nsp_labels"]
    ).mean()
    return mlm + nsp


def bertjax_curve(directory, head: str, dropout: float, seed: int | None) -> np.ndarray:
    """Losses of STEPS optimizer steps; seed None = dropout off (deterministic)."""
    cfg, params = from_hf(directory, hidden_dropout=dropout, attention_dropout=dropout)
    tx, step = _train_step(cfg, head, seed is not None)
    params = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(params)
    losses = []
    key = jax.random.PRNGKey(seed or 0)
    for i, batch in enumerate(_batches(head)):
        params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, i))
        losses.append(float(loss))
    return np.array(losses)


@functools.cache
def _train_step(cfg: models.ModelConfig, head: str, train: bool):
    """(optimizer, jitted step) for a model config: built once, so that the seeds of a curve
    share one compilation (the seed only changes the dropout key, an argument)."""
    model = models.build(cfg)
    tx, _ = optim.build(
        {
            "name": "adamw",
            "learning_rate": RECIPE["lr"],
            "b1": 0.9,
            "b2": 0.999,
            "eps": RECIPE["eps"],
            "weight_decay": RECIPE["weight_decay"],
            "grad_clip_norm": RECIPE["clip"],
        },
        total_steps=STEPS,
        warmup_steps=RECIPE["warmup"],
    )

    @jax.jit
    def step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(
            lambda p: _bertjax_loss(model, p, batch, rng if train else None, head)
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, step


def hf_curve(directory, head: str, dropout: float, seed: int | None) -> np.ndarray:
    model = getattr(transformers, HF_CLASSES[head]).from_pretrained(
        directory,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation="eager",
    )
    model.train()
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=RECIPE["lr"], betas=(0.9, 0.999), eps=RECIPE["eps"])
    schedule = transformers.get_linear_schedule_with_warmup(opt, RECIPE["warmup"], STEPS)
    torch.manual_seed(seed or 0)
    losses = []
    for batch in _batches(head):
        t = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        inputs = {k: t[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        if head in ("classification", "token_classification"):
            loss = model(**inputs, labels=t["labels"]).loss
        elif head == "question_answering":
            loss = model(
                **inputs, start_positions=t["start_positions"], end_positions=t["end_positions"]
            ).loss
        else:
            loss = model(**inputs, labels=t["mlm_labels"], next_sentence_label=t["nsp_labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["clip"])
        opt.step()
        schedule.step()
        opt.zero_grad()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("head", HEADS)
def test_dropout_off_loss_curves_agree_step_by_step(tmp_path, head):
    torch.set_num_threads(1)
    _hf_model(head, 0.0, tmp_path)
    ours = bertjax_curve(tmp_path, head, 0.0, None)
    theirs = hf_curve(tmp_path, head, 0.0, None)
    print(f"{head}: bertjax {np.round(ours, 5)}\n  transformers {np.round(theirs, 5)}")
    assert np.ptp(ours) > 0.01  # the steps move the params: not a comparison of no-ops
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


SEEDS = 4


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_dropout_on_mean_loss_curves_agree_within_the_seed_spread(tmp_path, head):
    torch.set_num_threads(1)
    _hf_model(head, 0.1, tmp_path)
    ours = np.stack([bertjax_curve(tmp_path, head, 0.1, s) for s in range(SEEDS)])
    theirs = np.stack([hf_curve(tmp_path, head, 0.1, s) for s in range(SEEDS)])
    # Mean over the second half of the run, per seed: what "learns as fast" means.
    ours_late, theirs_late = ours[:, STEPS // 2 :].mean(1), theirs[:, STEPS // 2 :].mean(1)
    spread = max(ours_late.std(ddof=1), theirs_late.std(ddof=1))
    print(f"{head}: late loss bertjax {ours_late} transformers {theirs_late} spread {spread:.4f}")
    assert abs(ours_late.mean() - theirs_late.mean()) <= 2 * spread
    # Step by step, the mean curves stay within the spread of the seeds at that step.
    step_spread = np.maximum(ours.std(0, ddof=1), theirs.std(0, ddof=1))
    assert np.all(np.abs(ours.mean(0) - theirs.mean(0)) <= 3 * step_spread + 1e-3)
    # Dropout is applied: the seeds differ.
    assert np.all(ours.std(0)[1:] > 0) and np.all(theirs.std(0)[1:] > 0)
