"""BERT (Devlin et al. 2018) in Flax linen: embeddings, post-LN encoder, pooler and heads.

All models share one flat parameter tree, so that a pretraining checkpoint's backbone drops
straight into a classifier (copy the `embeddings`, `encoder`, `pooler` sub-trees):

    embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding, layer_norm
    encoder/layer_{i}/attention/{query,key,value,out}, attention_layer_norm,
                      mlp/{wi,wo}, mlp_layer_norm
    pooler/dense
    mlm/{transform, transform_layer_norm, bias}        (BertForPreTraining; decoder = word emb.^T)
    nsp                                                (BertForPreTraining)
    classifier                                         (BertForSequenceClassification)
    qa_outputs                                         (BertForQuestionAnswering; no pooler)
    classifier                                         (BertForTokenClassification; no pooler)
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertjax import kernels
from bertjax.models import attention, layers
from bertjax.models.config import ModelConfig

Array = jax.Array
Batch = Mapping[str, Array]


def _embed(cfg: ModelConfig, num: int, names: tuple[str, str], name: str) -> nn.Embed:
    return nn.Embed(
        num_embeddings=num,
        features=cfg.hidden_size,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype,
        embedding_init=layers.kernel_init(cfg, names),
        name=name,
    )


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout."""

    cfg: ModelConfig

    def setup(self) -> None:
        cfg = self.cfg
        self.word_embeddings = _embed(cfg, cfg.vocab_size, ("vocab", "embed"), "word_embeddings")
        self.position_embeddings = _embed(
            cfg, cfg.max_position_embeddings, ("position", "embed"), "position_embeddings"
        )
        self.token_type_embeddings = _embed(
            cfg, cfg.type_vocab_size, ("type_vocab", "embed"), "token_type_embeddings"
        )
        self.layer_norm = layers.LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.params_dtype)
        self.dropout = layers.Dropout(cfg.hidden_dropout)

    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array,
        deterministic: bool,
        positions: Array | None = None,
    ) -> Array:
        length = input_ids.shape[1]
        # Packed rows (explicit positions, restarting per sequence) may be longer than any
        # one sequence; their positions are the caller's to keep in range.
        if positions is None and length > self.cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} > max_position_embeddings "
                f"{self.cfg.max_position_embeddings}"
            )
        # Packed rows restart the positions at each sequence's [CLS].
        if positions is None:
            positions = jnp.arange(length)[None, :]
        words = self.word_embeddings(input_ids)
        if self.cfg.pad_token_id is not None:  # torch.nn.Embedding(padding_idx=...): no grad
            is_pad = (input_ids == self.cfg.pad_token_id)[..., None]
            words = jnp.where(is_pad, jax.lax.stop_gradient(words), words)
        x = words + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        x = nn.with_logical_constraint(x, layers.ACT_BTE)
        return self.dropout(self.layer_norm(x), deterministic=deterministic)

    def attend(self, x: Array) -> Array:
        """x @ word_embeddings^T in the compute dtype, accumulated and returned in float32."""
        cfg = self.cfg
        return kernels.tied_logits(
            x, self.word_embeddings.embedding, cfg.compute_dtype, cfg.kernels
        )


class BertEncoder(nn.Module):
    """num_layers post-LN Transformer layers (each optionally rematerialised)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: attention.AttentionMask | Array | None, deterministic: bool
    ) -> Array:
        layer = layers.layer_class(self.cfg)
        for i in range(self.cfg.num_layers):
            x = layer(self.cfg, pre_ln=False, name=f"layer_{i}")(x, mask, deterministic)
        return x


class BertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the pooled sequence representation of each [CLS] hidden state."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, cls_hidden: Array) -> Array:
        # A square kernel names its output axis "mlp" so that the two axes never map to the
        # same mesh axis.
        dense = layers.dense(self.cfg, self.cfg.hidden_size, ("embed", "mlp"), name="dense")
        return jnp.tanh(dense(cls_hidden))


class BertMLMHead(nn.Module):
    """MLM transform (dense + act + LayerNorm); the decoder is supplied by the caller (tied)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, hidden: Array, embeddings: BertEmbeddings) -> Array:
        cfg = self.cfg
        h = layers.dense(cfg, cfg.hidden_size, ("embed", "mlp"), name="transform")(hidden)
        h = layers.ACTIVATIONS[cfg.hidden_act](h, cfg.kernels)
        h = layers.LayerNorm(
            cfg.layer_norm_eps, cfg.compute_dtype, cfg.params_dtype, name="transform_layer_norm"
        )(h)
        bias = self.param(
            "bias", layers.zeros_init(("vocab",)), (cfg.vocab_size,), cfg.params_dtype
        )
        logits = kernels.add_bias(embeddings.attend(h), bias)
        return nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))


class BertModel(nn.Module):
    """The BERT backbone: returns {"hidden_states": [B, T, H], "pooled": [B, H]}.

    Every head's `__call__(batch, train, embeddings=None)` may start from a given embedding
    output (`embed`), so that attributions can differentiate with respect to it.

    Packed rows (several sequences per row, `bertjax.data.packing`) add batch keys
    `segment_ids` [B, T] (attention stays within equal ids), `positions` [B, T] (restarting
    at each sequence) and `cls_positions` [B, K] (each sequence's [CLS]); "pooled" is then
    [B, K, H], one per packed sequence. Packed fine-tuning batches
    (`bertjax.data.example_packing`) give `cls_index` [E] instead: each example's [CLS] as a
    flat index into the [B * T] tokens; "pooled" is then [E, H], one per example.
    """

    cfg: ModelConfig

    def setup(self) -> None:
        self.embeddings = BertEmbeddings(self.cfg)
        self.encoder = BertEncoder(self.cfg)
        self.pooler = BertPooler(self.cfg)

    def embed(self, batch: Batch, train: bool = False) -> Array:
        """The embedding output [B, T, H] (after its LayerNorm and dropout): what `encode`
        continues from, and where attributions take their gradients (as captum hooks BERT).

        `module.apply(variables, batch, method="embed")`."""
        input_ids = batch["input_ids"]
        token_type_ids = batch.get("token_type_ids")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        return self.embeddings(input_ids, token_type_ids, not train, batch.get("positions"))

    def encode(
        self, batch: Batch, train: bool, pool: bool = True, embeddings: Array | None = None
    ) -> dict[str, Array]:
        """Hidden states (and "pooled") of `batch`; `embeddings` [B, T, H] given = continue
        from that embedding output instead of `embed(batch)` (the batch then supplies only the
        masks and positions)."""
        deterministic = not train
        x = self.embed(batch, train) if embeddings is None else embeddings
        # Structured, so that cuDNN's fused attention takes the padding as key lengths
        # (right-padded rows, as every bertjax pipeline and Hugging Face tokenizer make them).
        mask = None
        if batch.get("attention_mask") is not None or batch.get("segment_ids") is not None:
            mask = attention.AttentionMask(
                key_padding=batch.get("attention_mask"), segment_ids=batch.get("segment_ids")
            )
        hidden = self.encoder(x, mask, deterministic)
        if not pool:
            return {"hidden_states": hidden}
        cls_positions = batch.get("cls_positions")
        if batch.get("cls_index") is not None:  # packed fine-tuning rows: one [CLS] per example
            flat = hidden.reshape(-1, hidden.shape[-1])
            cls_hidden = jnp.take(flat, batch["cls_index"].astype(jnp.int32), axis=0)
        elif cls_positions is None:
            cls_hidden = hidden[:, 0]
        else:
            index = cls_positions[:, :, None].astype(jnp.int32)
            cls_hidden = jnp.take_along_axis(hidden, index, axis=1)
        return {"hidden_states": hidden, "pooled": self.pooler(cls_hidden)}

    def __call__(
        self, batch: Batch, train: bool = False, embeddings: Array | None = None
    ) -> dict[str, Array]:
        return self.encode(batch, train, embeddings=embeddings)


class BertForPreTraining(BertModel):
    """BERT + MLM head (tied decoder with its own bias) + NSP head on the pooled output.

    Adds "mlm_logits" ([B, T, V], or [B, P, V] at batch["masked_lm_positions"] when present:
    the hidden states are gathered BEFORE the MLM transform so its cost is paid only at the
    masked positions) and "nsp_logits" [B, 2] (0 = IsNext, 1 = random; [B, K, 2] for packed
    rows), both float32.
    """

    def setup(self) -> None:
        super().setup()
        self.mlm = BertMLMHead(self.cfg)
        self.nsp = layers.dense(self.cfg, 2, ("embed", "labels"), name="nsp")

    def mlm_logits(self, batch: Batch, hidden: Array) -> Array:
        positions = batch.get("masked_lm_positions")
        if positions is not None:
            hidden = jnp.take_along_axis(hidden, positions[:, :, None].astype(jnp.int32), axis=1)
        return self.mlm(hidden, self.embeddings)

    def __call__(
        self, batch: Batch, train: bool = False, embeddings: Array | None = None
    ) -> dict[str, Array]:
        out = self.encode(batch, train, embeddings=embeddings)
        out["mlm_logits"] = self.mlm_logits(batch, out["hidden_states"])
        out["nsp_logits"] = self.nsp(out["pooled"]).astype(jnp.float32)
        return out


class BertForMaskedLM(BertForPreTraining):
    """BERT + MLM head only (no pooler, no NSP), as HF BertForMaskedLM: "mlm_logits"."""

    def setup(self) -> None:
        BertModel.setup(self)
        self.mlm = BertMLMHead(self.cfg)

    def __call__(
        self, batch: Batch, train: bool = False, embeddings: Array | None = None
    ) -> dict[str, Array]:
        out = self.encode(batch, train, pool=False, embeddings=embeddings)
        out["mlm_logits"] = self.mlm_logits(batch, out["hidden_states"])
        return out


class BertForSequenceClassification(BertModel):
    """BERT + dropout + linear classifier on the pooled output: "logits" [B, num_labels] float32.

    num_labels == 1 is regression (e.g. STS-B): the single logit is the prediction.
    """

    def setup(self) -> None:
        super().setup()
        self.dropout = layers.Dropout(self.cfg.hidden_dropout)
        self.classifier = layers.dense(
            self.cfg,
            self.cfg.num_labels,
            ("embed", "labels"),
            init=self.cfg.head_init,
            name="classifier",
        )

    def __call__(
        self, batch: Batch, train: bool = False, embeddings: Array | None = None
    ) -> dict[str, Array]:
        out = self.encode(batch, train, embeddings=embeddings)
        pooled = self.dropout(out["pooled"], deterministic=not train)
        out["logits"] = self.classifier(pooled).astype(jnp.float32)
        return out


class BertForQuestionAnswering(BertModel):
    """BERT + a linear span head on every token, as HF BertForQuestionAnswering (no pooler):
    "start_logits" and "end_logits" [B, T] float32."""

    def setup(self) -> None:
        BertModel.setup(self)
        self.qa_outputs = layers.dense(
            self.cfg, 2, ("embed", "labels"), init=self.cfg.head_init, name="qa_outputs"
        )

    def __call__(
        self, batch: Batch, train: bool = False, embeddings: Array | None = None
    ) -> dict[str, Array]:
        out = self.encode(batch, train, pool=False, embeddings=embeddings)
        logits = self.qa_outputs(out["hidden_states"]).astype(jnp.float32)
        out["start_logits"], out["end_logits"] = logits[..., 0], logits[..., 1]
        return out


class BertForTokenClassification(BertModel):
    """BERT + dropout + a linear tagger on every token, as HF BertForTokenClassification (no
    pooler): "logits" [B, T, num_labels] float32."""

    def setup(self) -> None:
        BertModel.setup(self)
        self.dropout = layers.Dropout(self.cfg.hidden_dropout)
        self.classifier = layers.dense(
            self.cfg,
            self.cfg.num_labels,
            ("embed", "labels"),
            init=self.cfg.head_init,
            name="classifier",
        )

    def __call__(
        self, batch: Batch, train: bool = False, embeddings: Array | None = None
    ) -> dict[str, Array]:
        out = self.encode(batch, train, pool=False, embeddings=embeddings)
        hidden = self.dropout(out["hidden_states"], deterministic=not train)
        out["logits"] = self.classifier(hidden).astype(jnp.float32)
        return out


HEAD_CLASSES: dict[str, type[BertModel]] = {
    "encoder": BertModel,
    "pretraining": BertForPreTraining,
    "mlm": BertForMaskedLM,
    "classification": BertForSequenceClassification,
    "question_answering": BertForQuestionAnswering,
    "token_classification": BertForTokenClassification,
}


def build(cfg: ModelConfig) -> BertModel:
    """The BERT module for `cfg.head`."""
    if cfg.head not in HEAD_CLASSES:
        raise ValueError(f"BERT has no head {cfg.head!r}; supported: {sorted(HEAD_CLASSES)}")
    return HEAD_CLASSES[cfg.head](cfg)
