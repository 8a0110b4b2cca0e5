r"""Train-step speed and MFU of bertjax next to `transformers` (PyTorch); prints one table.

    python benchmarks/train_speed.py                       # the rows for the devices present
    python benchmarks/train_speed.py --rows=bert_cpu --rounds=7 --out=/tmp/speed.md
    python benchmarks/train_speed.py --rows=bert_base --batch_sizes=64,128,256   # on a GPU

What is timed, per row, on the same batches for both frameworks:

* bertjax: the REAL jitted train step of `bertjax/train.py` (`train.build_trainer`: sharded
  state, the task's loss, AdamW with global-norm clipping, the state donated), one call per
  step, batches already on the device; timed until the last step's outputs are ready.
  bfloat16 compute with float32 master weights, except on a CPU without AMX-BF16 (read from
  /proc/cpuinfo), where it is float32 (`ModelConfig(dtype="auto")`'s choice; --dtype forces).
* transformers: `BertForPreTraining` (MLM + NSP) or `GPT2LMHeadModel` of the same size, the
  same loss, `torch.optim.AdamW` (weight decay off for biases and LayerNorm, as the BERT recipe),
  `clip_grad_norm_(1.0)`; on a GPU bf16 autocast, SDPA attention and the fused AdamW (what a
  user of the Trainer gets with `bf16=True`); on the CPU float32 with the same thread count
  (what a user of transformers runs there), or bf16 autocast with `--torch_dtype=bfloat16`.

Both run `--rounds` rounds of `--steps` steps after `--warmup` steps, ALTERNATING between the
frameworks (the machine is shared and noisy), and the table gives the median of the rounds.

Batches: full-length rows of random token ids (every position real, so that both frameworks
do exactly the model's work): BERT rows with a segment A/B boundary drawn per row,
`max_predictions` masked positions per row (MLM only there, as google-research/bert), random NSP
labels; GPT rows of `seq` tokens with the next tokens as targets. Dropout 0.1 on hidden states
in both; attention-probability dropout 0 in both (the fused attention kernels have none; a
config with attention_dropout > 0 takes the slower reference attention in training).

Model FLOPs per step (the numerator of MFU), counting only matmuls the step actually performs
(embedding lookups, LayerNorm, softmax, GELU and the optimizer are not counted):

    FLOPs/step = 3 * forward      (backward = 2 x forward: input and weight gradients)
    forward    = 2 * sum over matmuls of (rows multiplied x parameters of the matmul)
               + attention: 2 * 2 * T_keys * H per query token per layer (QK^T and AV)

    BERT (pretraining):  B*T * L * [2(4H^2 + 2HI) + 4 T H]        encoder
                       + B * [2H^2 + 2*2H]                        pooler + NSP ([CLS] only)
                       + B*P * [2H^2 + 2HV]                       MLM transform + tied decoder,
                                                                  at the P masked positions only
    GPT-2 (LM):          B*T * L * [2(4H^2 + 2HI) + 4 (T+1)/2 H]  causal: a query sees (T+1)/2
                                                                  keys on average
                       + B*T * 2HV                                tied LM head at every position

i.e. 6 N per token for the N parameters each token multiplies, plus 12 L H T (bidirectional)
or 6 L H (T+1) (causal) per token for attention. `transformers`' BertForPreTraining computes
the MLM decoder at all T positions (about 2.5x our FLOPs for BERT-base at seq 128); its speed
is converted with the SAME formula, so the ratio is a ratio of steps/s on identical batches.

MFU = FLOPs/step x steps/s / (devices x peak). Peak per device kind: the bf16 dense datasheet
figure of `bertjax.metrics` (as the training loop's MFU) and a "measured" large-matmul figure,
`MEASURED_PEAK_TFLOPS` below. With `--measure_peak` (the
default on accelerators) the script also times a 8192^3 bf16 matmul on the device and reports
MFU against that too. CPUs have no entry: no MFU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# bf16 dense peaks: the datasheet figures are `bertjax.metrics`' (the training loop's MFU);
# here also the rate of a large measured matmul where we know one, TFLOP/s per device.
MEASURED_PEAK_TFLOPS: dict[str, float] = {
    "H200": 790.0,  # 8192^3 bf16 matmul (datasheet 989)
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark row: a model size, a sequence length and the batch sizes to try."""

    name: str
    family: str  # "bert" | "gpt"
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    seq: int
    batch_sizes: tuple[int, ...]
    max_predictions: int = 0  # BERT: masked positions per row
    max_positions: int = 512


ROWS: dict[str, Row] = {
    # The CPU target: BERT-mini sized (Turc et al.), seq 128, batch 32, 20 masked positions.
    "bert_cpu": Row("bert_cpu", "bert", 4, 256, 4, 1024, 30522, 128, (32,), 20),
    "gpt_cpu": Row("gpt_cpu", "gpt", 4, 256, 4, 1024, 50257, 128, (16,), max_positions=1024),
    "bert_base": Row("bert_base", "bert", 12, 768, 12, 3072, 30522, 128, (64, 128, 256), 20),
    "bert_large": Row("bert_large", "bert", 24, 1024, 16, 4096, 30522, 512, (8, 16, 32), 80),
    "gpt2_small": Row(
        "gpt2_small", "gpt", 12, 768, 12, 3072, 50257, 1024, (8, 16, 32), max_positions=1024
    ),
}
CPU_ROWS = ("bert_cpu", "gpt_cpu")
ACCELERATOR_ROWS = ("bert_base", "bert_large", "gpt2_small")


# ------------------------------------------------------------------------------------- FLOPs


def flops_per_step(row: Row, batch: int) -> float:
    """Model FLOPs of one train step: `bertjax.metrics.model_flops_per_step` (the loop's MFU)."""
    from bertjax import metrics, models

    cfg = models.ModelConfig(
        model_type="bert" if row.family == "bert" else "gpt2",
        head="pretraining" if row.family == "bert" else "causal_lm",
        vocab_size=row.vocab,
        hidden_size=row.hidden,
        num_layers=row.layers,
        num_heads=row.heads,
        intermediate_size=row.intermediate,
    )
    return metrics.model_flops_per_step(cfg, batch, row.seq, row.max_predictions)


def matmul_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of every dot_general in the jaxpr of `fn(*args)` (2 per multiply-add).

    Counts what the program really multiplies (transposes, scans and remat included, the
    while-loops of gradient accumulation times their trip count), to check `flops_per_step`.
    """
    import jax

    try:
        from jax.extend.core import jaxprs_in_params
    except ImportError:  # older jax
        jaxprs_in_params = jax.core.jaxprs_in_params

    def count(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                contract = np.prod([lhs[d] for d in lhs_contract])
                out = np.prod(eqn.outvars[0].aval.shape)
                total += 2.0 * float(out) * float(contract)
            for sub in jaxprs_in_params(eqn.params):
                mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
                total += mult * count(sub)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


# ------------------------------------------------------------------------------------ batches


def make_batches(row: Row, batch: int, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` different host batches of full-length rows (see the module docstring)."""
    rng = np.random.default_rng(seed)
    low = min(1000, row.vocab // 2)  # ordinary tokens, above BERT's special ids (101..103)
    out = []
    for _ in range(count):
        ids = rng.integers(low, row.vocab, (batch, row.seq), dtype=np.int32)
        if row.family == "gpt":
            targets = np.roll(ids, -1, axis=1)
            targets[:, -1] = rng.integers(low, row.vocab, batch)
            out.append({"input_ids": ids, "targets": targets.astype(np.int32)})
            continue
        boundary = rng.integers(row.seq // 4, 3 * row.seq // 4, batch)
        pos = np.arange(row.seq)[None, :]
        ids[:, 0] = 101  # [CLS]
        ids[np.arange(batch), boundary] = 102  # [SEP] ending A
        ids[:, -1] = 102  # [SEP] ending B
        types = (pos > boundary[:, None]).astype(np.int32)
        # P distinct positions per row among the non-special ones, ascending.
        scores = rng.random((batch, row.seq))
        special = (pos == 0) | (pos == boundary[:, None]) | (pos == row.seq - 1)
        scores[special] = 2.0
        positions = np.sort(np.argsort(scores, axis=1)[:, : row.max_predictions], axis=1)
        targets = np.take_along_axis(ids, positions, axis=1)
        ids[np.arange(batch)[:, None], positions] = 103  # [MASK]
        out.append(
            {
                "input_ids": ids,
                "token_type_ids": types,
                "attention_mask": np.ones_like(ids),
                "masked_lm_positions": positions.astype(np.int32),
                "masked_lm_ids": targets.astype(np.int32),
                "masked_lm_weights": np.ones(positions.shape, np.float32),
                "next_sentence_labels": rng.integers(0, 2, batch).astype(np.int32),
            }
        )
    return out


# ------------------------------------------------------------------------------------ bertjax


def bertjax_config(row: Row, batch: int, args: argparse.Namespace):
    """The experiment config of a row: the tiny config file with the row's sizes."""
    from bertjax import config_lib

    path = "configs/bert_tiny_pretrain.py" if row.family == "bert" else "configs/gpt_tiny_lm.py"
    config = config_lib.load(REPO / path)
    with config.unlocked():
        m = config.model
        m.preset = "base" if row.family == "bert" else "gpt2"
        m.num_layers, m.hidden_size, m.num_heads = row.layers, row.hidden, row.heads
        m.intermediate_size, m.vocab_size = row.intermediate, row.vocab
        m.max_position_embeddings = row.max_positions
        m.hidden_dropout, m.attention_dropout = 0.1, 0.0
        m.dtype = args.dtype
        m.param_dtype = "float32"
        m.remat = args.remat
        m.attention_impl = args.attention_impl
        config.data.max_seq_length = row.seq
        if row.family == "bert":
            config.data.max_predictions_per_seq = row.max_predictions
        config.batch_size = batch
        config.total_steps = 10**6  # the schedule only shapes the learning rate
        config.optim.warmup_steps = 1000
        config.optim.learning_rate = 1e-4
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    return config


class BertjaxRunner:
    """The jitted train step of bertjax/train.py on one row; `run(n)` does n steps."""

    def __init__(
        self,
        row: Row,
        batch: int,
        host_batches: list[dict[str, np.ndarray]],
        args,
        num_devices: int | None = None,
    ):
        import jax

        from bertjax import sharding, tasks, train

        self.config = bertjax_config(row, batch, args)
        task = tasks.get(self.config.task)
        devices = jax.devices()[: num_devices or jax.device_count()]
        mesh = sharding.make_mesh(self.config.mesh, devices)
        model_cfg, model = task.build_model(self.config, None)
        schedule = train.Schedule(
            self.config.total_steps, self.config.optim.warmup_steps, eval_every=-1
        )
        self.trainer = train.build_trainer(self.config, task, model_cfg, model, mesh, schedule)
        self.state = self.trainer.init_state(jax.random.PRNGKey(0))
        self.batches = [sharding.global_batch(b, mesh, batch) for b in host_batches]
        self.devices = mesh.size
        self.metrics = None
        self._i = 0

    def run(self, steps: int) -> None:
        import jax

        for _ in range(steps):
            batch = self.batches[self._i % len(self.batches)]
            self._i += 1
            self.state, self.metrics = self.trainer.step(self.state, batch)
        jax.block_until_ready((self.state["step"], self.metrics))

    def last_loss(self) -> float:
        return float(self.metrics["loss"])

    def hlo_text(self) -> str:
        """The optimized HLO of the compiled train step."""
        return self.trainer.step.as_text()


# ------------------------------------------------------------------------------ transformers


class TorchRunner:
    """transformers' model of the same size, AdamW + clipping, on the same batches."""

    def __init__(self, row: Row, batch: int, host_batches: list[dict[str, np.ndarray]], args):
        import torch
        import transformers

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(0)
        common = dict(attn_implementation="sdpa")
        if row.family == "bert":
            cfg = transformers.BertConfig(
                vocab_size=row.vocab,
                hidden_size=row.hidden,
                num_hidden_layers=row.layers,
                num_attention_heads=row.heads,
                intermediate_size=row.intermediate,
                max_position_embeddings=row.max_positions,
                hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.0,
                **common,
            )
            model = transformers.BertForPreTraining(cfg)
        else:
            cfg = transformers.GPT2Config(
                vocab_size=row.vocab,
                n_embd=row.hidden,
                n_layer=row.layers,
                n_head=row.heads,
                n_inner=row.intermediate,
                n_positions=row.max_positions,
                resid_pdrop=0.1,
                embd_pdrop=0.1,
                attn_pdrop=0.0,
                **common,
            )
            model = transformers.GPT2LMHeadModel(cfg)
        self.model = model.to(self.device).train()
        self.family = row.family
        decay, no_decay = [], []
        for p in self.model.parameters():
            (no_decay if p.ndim == 1 else decay).append(p)  # biases and LayerNorm
        groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0}]
        self.opt = torch.optim.AdamW(groups, lr=1e-4, eps=1e-6, fused=self.cuda or None)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if args.torch_dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        self.batches = [self._to_torch(b) for b in host_batches]
        self.step_fn = self._step
        if args.torch_compile:
            self.step_fn = torch.compile(self._step)
        self._i = 0
        self.loss = None

    def _to_torch(self, b: dict[str, np.ndarray]) -> dict[str, Any]:
        t = self.torch
        if self.family == "gpt":
            ids = t.from_numpy(b["input_ids"]).long()
            # GPT2LMHeadModel shifts the labels itself (T-1 targets per row, ours T); its LM
            # head still multiplies all T positions, as ours.
            return {"input_ids": ids.to(self.device), "labels": ids.to(self.device)}
        ids = t.from_numpy(b["input_ids"]).long()
        labels = t.full_like(ids, -100)
        rows = t.arange(ids.shape[0])[:, None]
        labels[rows, t.from_numpy(b["masked_lm_positions"]).long()] = t.from_numpy(
            b["masked_lm_ids"]
        ).long()
        return {
            "input_ids": ids.to(self.device),
            "token_type_ids": t.from_numpy(b["token_type_ids"]).long().to(self.device),
            "attention_mask": t.from_numpy(b["attention_mask"]).long().to(self.device),
            "labels": labels.to(self.device),
            "next_sentence_label": t.from_numpy(b["next_sentence_labels"]).long().to(self.device),
        }

    def _step(self, batch: dict[str, Any]):
        with self.autocast:
            loss = self.model(**batch).loss
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def run(self, steps: int) -> None:
        for _ in range(steps):
            batch = self.batches[self._i % len(self.batches)]
            self._i += 1
            self.loss = self.step_fn(batch)
        if self.cuda:
            self.torch.cuda.synchronize()

    def last_loss(self) -> float:
        return float(self.loss.detach())


# ------------------------------------------------------------------------------------ timing


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) that `fn()` took."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(
    runners: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Steps per wall second and per CPU second of each runner, per round (alternating).

    On a shared CPU the wall clock counts the time other programs hold the cores; the CPU time
    of this process does not, but it is no cure: under load PyTorch's threads burn extra CPU
    waiting for a core (7.65 CPU s per bert_cpu step under load, 4.71 alone), so both ratios
    are inflated on a busy machine. Compare frameworks on a quiet one. On an accelerator only
    the wall clock means anything.
    """
    for runner in runners.values():
        runner.run(args.warmup)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    cpu_rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        # Alternate which one goes first, so neither always follows the other's cache state.
        order = list(runners) if r % 2 == 0 else list(reversed(list(runners)))
        for name in order:
            wall, cpu = timed(lambda runner=runners[name]: runner.run(args.steps))
            rates[name].append(args.steps / wall)
            cpu_rates[name].append(args.steps / max(cpu, 1e-9))
    return rates, cpu_rates


def row_platform() -> str:
    import jax

    return jax.devices()[0].platform


def cpuinfo(field: str) -> str:
    """The first value of `field` ("model name", "flags") in /proc/cpuinfo, or ""."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def device_description() -> tuple[str, int, str]:
    import jax

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    if dev.platform == "cpu":
        name = cpuinfo("model name") or platform.processor() or "cpu"
        kind = f"{name} ({os.cpu_count()} cores)"
    return dev.platform, jax.device_count(), kind


def cpu_bf16_units() -> str:
    """The bf16 matmul instructions this CPU has ("amx_bf16", "avx512_bf16"), or ""."""
    from bertjax.kernels import cpu_features

    return ", ".join(cpu_features.bf16_matmul_units())


def peak_for(kind: str) -> tuple[float, float | None] | None:
    """(datasheet, measured or None) bf16 peak TFLOP/s of a device kind, or None if unknown."""
    from bertjax import metrics

    datasheet = metrics.peak_flops_for_kind(kind)
    if datasheet is None:
        return None
    measured = next((v for m, v in MEASURED_PEAK_TFLOPS.items() if m.lower() in kind.lower()), None)
    return datasheet / 1e12, measured


def measure_matmul_peak(seconds: float = 3.0) -> float:
    """TFLOP/s of a 8192^3 bf16 matmul on the default device (best of a few timings)."""
    import jax
    import jax.numpy as jnp

    n = 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(10):
            out = f(a, b)
        out.block_until_ready()
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t0))
    return best / 1e12


# ------------------------------------------------------------------------------------- table


def format_table(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    cols = [
        ("row", "{}"),
        ("devices", "{}"),
        ("batch", "{}"),
        ("seq", "{}"),
        ("GFLOP/step", "{:.1f}"),
        ("steps/s", "{:.3f}"),
        ("seq/s", "{:.1f}"),
        ("tokens/s", "{:,.0f}"),
        ("TFLOP/s", "{:.2f}"),
        ("MFU", "{}"),
        ("MFU (measured peak)", "{}"),
        ("torch steps/s", "{}"),
        ("ratio", "{}"),
    ]
    if any("ratio (CPU time)" in r for r in results):
        cols += [("ratio (CPU time)", "{}")]
    lines = [
        f"# bertjax train-step speed - {header['date']}",
        "",
        f"device: {header['device']} x {header['devices']} ({header['platform']}); "
        f"jax {header['jax']}, torch {header['torch']}, transformers {header['transformers']}",
        f"compute dtype: bertjax {header['dtype']} (params float32), transformers "
        f"{header['torch_dtype']}{' (autocast)' if header['torch_dtype'] == 'bfloat16' else ''}; "
        f"remat {header['remat']}, attention {header['attention_impl']}{header['threads']}",
        f"peak: {header['peak']}",
        f"command: {header['command']}",
        f"medians of {header['rounds']} alternating rounds of {header['steps']} steps "
        f"(after {header['warmup']} warm-up steps); ratio = median over rounds of bertjax "
        "steps/s over transformers steps/s (on a CPU also per CPU second of this process; "
        "both are inflated when other programs load the machine); FLOPs per step by the formula in "
        "benchmarks/train_speed.py (6N per token over the matmuls actually computed + attention)",
        "",
        "| " + " | ".join(c for c, _ in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in results:
        cells = []
        for name, fmt in cols:
            value = r.get(name, "")
            cells.append(fmt.format(value) if value not in ("", None) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in results if "error" in r]
    if errors:
        lines.append("")
        lines.extend(f"- {r['row']} batch {r['batch']}: {r['error']}" for r in errors)
    return "\n".join(lines)


def run_row(row: Row, batch: int, args, peaks, device_counts: list[int]) -> list[dict[str, Any]]:
    """Times bertjax on each mesh size and transformers, alternating; one result per mesh."""
    host_batches = make_batches(row, batch, args.num_batches)
    runners: dict[str, Any] = {}
    for n in device_counts:
        runners[f"bertjax@{n}"] = BertjaxRunner(row, batch, host_batches, args, n)
    if not args.no_torch:
        runners["torch"] = TorchRunner(row, batch, host_batches, args)
    rates, cpu_rates = measure(runners, args)
    on_cpu = row_platform() == "cpu"
    flops = flops_per_step(row, batch)
    results = []
    for n in device_counts:
        name = f"bertjax@{n}"
        sps = statistics.median(rates[name])
        result: dict[str, Any] = {
            "row": row.name,
            "devices": n,
            "batch": batch,
            "seq": row.seq,
            "GFLOP/step": flops / 1e9,
            "steps/s": sps,
            "seq/s": sps * batch,
            "tokens/s": sps * batch * row.seq,
            "TFLOP/s": sps * flops / 1e12,
            "rounds": [round(x, 4) for x in rates[name]],
            "loss": runners[name].last_loss(),
        }
        if peaks is not None:
            datasheet, measured = peaks
            result["MFU"] = f"{100 * sps * flops / (n * datasheet * 1e12):.1f}%"
            if measured:
                result["MFU (measured peak)"] = f"{100 * sps * flops / (n * measured * 1e12):.1f}%"
        if "torch" in rates:
            tps = statistics.median(rates["torch"])
            result["torch steps/s"] = f"{tps:.3f}"
            # Median of the per-round ratios: each round's two timings are minutes apart at
            # most, so the machine's drifting load cancels out of each ratio.
            ratios = [a / b for a, b in zip(rates[name], rates["torch"], strict=True)]
            result["ratio"] = f"{statistics.median(ratios):.2f}x"
            if on_cpu:
                cpu_ratios = [
                    a / b for a, b in zip(cpu_rates[name], cpu_rates["torch"], strict=True)
                ]
                result["ratio (CPU time)"] = f"{statistics.median(cpu_ratios):.2f}x"
                result["CPU s/step"] = 1 / statistics.median(cpu_rates[name])
                result["torch CPU s/step"] = 1 / statistics.median(cpu_rates["torch"])
            result["torch rounds"] = [round(x, 4) for x in rates["torch"]]
            result["torch loss"] = runners["torch"].last_loss()
        results.append(result)
    wanted = {item for item in args.profile_rows.split(",") if item}
    if args.profile and (not wanted or f"{row.name}:{batch}" in wanted):
        import jax

        for n in device_counts:
            path = pathlib.Path(args.profile) / f"{row.name}_b{batch}_d{n}"
            runner = runners[f"bertjax@{n}"]
            with jax.profiler.trace(str(path), create_perfetto_trace=True):
                runner.run(args.steps)
            (path / "train_step.hlo.txt").write_text(runner.hlo_text())
            results[device_counts.index(n)]["profile"] = str(path)
            print(profile_summary(path, runner.hlo_text(), args.steps), flush=True)
    return results


def profile_summary(path: pathlib.Path, hlo_text: str, steps: int, top: int = 25) -> str:
    """Where a profiled step's time goes: the top ops, and the time by part of the model.

    Reads the Perfetto trace that `jax.profiler.trace(create_perfetto_trace=True)` wrote and
    names each op by the `op_name` metadata of the compiled HLO (XLA:CPU thunks and XLA:GPU
    kernels are named after their HLO fusions; library kernels keep their own names).
    """
    import collections
    import gzip
    import json
    import re

    files = sorted(path.glob("**/*.trace.json.gz"))
    if not files:
        return f"profile {path}: no trace.json.gz written"
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    op_names: dict[str, str] = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
        if m:
            op_names[m.group(1)] = m.group(2)
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in op_names:
            per_op[e["name"]] += e.get("dur", 0)
    if not per_op:  # no event carries an HLO name: summarise by event name instead
        skip = ("ThunkExecutor", "$", "PjRt", "Execute", "ExecuteHelper")
        for e in events:
            if e.get("ph") == "X" and not str(e.get("name", "")).startswith(skip):
                per_op[e["name"]] += e.get("dur", 0)
    total = sum(per_op.values()) or 1

    def part(op: str) -> str:
        where = "backward" if "transpose(jvp" in op else "forward"
        for key, label in (
            ("attention/query", "attention projections"),
            ("attention/key", "attention projections"),
            ("attention/value", "attention projections"),
            ("attention/out", "attention projections"),
            ("layer_norm", "layer norm"),
            ("attention", "attention core"),
            ("mlp/", "feed-forward"),
            ("Dropout", "dropout"),
            ("mlm", "MLM head + loss"),
            ("embeddings", "embeddings"),
        ):
            if key in op:
                return f"{label} ({where})"
        if "jvp" in op:
            return f"loss / LM head ({where})"
        return "optimizer, metrics, other"

    by_part: collections.Counter = collections.Counter()
    for name, dur in per_op.items():
        by_part[part(op_names.get(name, name))] += dur
    lines = [f"profile {path}: {total / 1e3 / steps:.1f} ms of op time per step"]
    lines += [f"  {100 * d / total:5.1f}%  {p}" for p, d in by_part.most_common()]
    lines.append(f"  top {top} ops (ms per step):")
    for name, dur in per_op.most_common(top):
        op = op_names.get(name, "")
        lines.append(f"  {dur / 1e3 / steps:8.2f}  {name[:40]:40s} {op[-90:]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="", help=f"comma-separated, of {sorted(ROWS)}")
    parser.add_argument("--batch_sizes", default="", help="override the rows' batch sizes")
    parser.add_argument(
        "--configs",
        default="",
        help="explicit row:batch list, run in this order (e.g. bert_base:256,gpt2_small:32); "
        "overrides --rows and --batch_sizes",
    )
    parser.add_argument(
        "--time_budget",
        type=float,
        default=0,
        help="seconds: start no new row after this much time (the table says what was skipped)",
    )
    parser.add_argument(
        "--devices",
        default="",
        help="device counts of the bertjax mesh to run, e.g. '1,all' (default 'all': every "
        "accelerator, or the one host CPU device unless --cpu_devices is set)",
    )
    parser.add_argument(
        "--cpu_devices",
        type=int,
        default=0,
        help="host CPU devices for XLA (xla_force_host_platform_device_count; 0: leave as is), "
        "so that a mesh can be data parallel over the cores",
    )
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: auto)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num_batches", type=int, default=4, help="distinct batches cycled")
    parser.add_argument(
        "--dtype",
        default="",
        help="bertjax compute dtype (default: bfloat16, but float32 on a CPU without bf16 "
        "matmul instructions)",
    )
    parser.add_argument(
        "--torch_dtype",
        default="",
        help="transformers side: float32, or bfloat16 (torch.autocast). Default: as --dtype on "
        "an accelerator, float32 on a CPU (what a user of transformers runs there)",
    )
    parser.add_argument("--remat", default="none")
    parser.add_argument("--attention_impl", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: cores)")
    parser.add_argument("--no_torch", action="store_true", help="skip transformers")
    parser.add_argument("--torch_compile", action="store_true", help="torch.compile the step")
    parser.add_argument("--measure_peak", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--profile", default="", help="write a jax profiler trace per row here")
    parser.add_argument(
        "--profile_rows", default="", help="row:batch list to profile (default: every row)"
    )
    parser.add_argument("--out", default="", help="also write the table (markdown) here")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    threads = args.threads or cores
    flags = os.environ.get("XLA_FLAGS", "")
    if args.cpu_devices and "xla_force_host_platform_device_count" not in flags:
        count = f"--xla_force_host_platform_device_count={args.cpu_devices}"
        os.environ["XLA_FLAGS"] = f"{flags} {count}".strip()
    import jax

    plat, total_devices, kind = device_description()
    on_cpu = plat == "cpu"
    bf16_units = cpu_bf16_units() if on_cpu else ""
    # The compute dtype ModelConfig(dtype="auto") picks here: bf16 on a CPU only with AMX-BF16
    # (with AVX512-BF16 alone it lost to float32: 0.961 against 1.085 steps/s, issue 14).
    from bertjax.kernels import cpu_features

    args.dtype = args.dtype or cpu_features.preferred_compute_dtype(plat)
    args.torch_dtype = args.torch_dtype or ("float32" if on_cpu else args.dtype)
    for flag in ("dtype", "torch_dtype"):
        if getattr(args, flag) not in ("float32", "bfloat16"):
            parser.error(f"--{flag}={getattr(args, flag)}: expected float32 or bfloat16")
    args.steps = args.steps or (3 if on_cpu else 20)
    if args.configs:
        plan = []
        for item in args.configs.split(","):
            name, _, size = item.partition(":")
            plan.append((name, int(size) if size else 0))
    else:
        names = (args.rows or ",".join(CPU_ROWS if on_cpu else ACCELERATOR_ROWS)).split(",")
        sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [0]
        plan = [(name, size) for name in names for size in sizes]
    unknown = sorted({name for name, _ in plan if name not in ROWS})
    if unknown:
        parser.error(f"unknown row(s) {unknown}; known: {sorted(ROWS)}")
    plan = [
        (name, size)
        for name, batch in plan
        for size in ([batch] if batch else ROWS[name].batch_sizes)
    ]
    device_counts = []
    for item in (args.devices or "all").split(","):
        n = total_devices if item == "all" else int(item)
        if not 1 <= n <= total_devices:
            parser.error(f"--devices: {item} is not in [1, {total_devices}]")
        if n not in device_counts:
            device_counts.append(n)
    torch_version = transformers_version = "-"
    if not args.no_torch:
        import torch
        import transformers

        torch.set_num_threads(threads)
        torch_version, transformers_version = torch.__version__, transformers.__version__
    peaks = peak_for(kind)
    if peaks is not None and (
        args.measure_peak == "yes" or (args.measure_peak == "auto" and not on_cpu)
    ):
        peaks = (peaks[0], measure_matmul_peak())
    elif args.measure_peak == "yes":
        peaks = (float("nan"), measure_matmul_peak())
    peak_text = "none (no MFU on CPU)"
    if peaks is not None:
        peak_text = f"{peaks[0]:.0f} TFLOP/s bf16 datasheet per device" + (
            f"; {peaks[1]:.0f} TFLOP/s measured (8192^3 bf16 matmul)" if peaks[1] else ""
        )
    cpu_note = ""
    if on_cpu:
        cpu_note = (
            f"; {cores} cores (bf16 matmul instructions: {bf16_units or 'none'}): torch "
            f"{threads} threads, XLA's intra-op threads over all cores (a mesh of several host "
            "devices runs data parallel over them)"
        )
    header = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "device": kind,
        "devices": total_devices,
        "platform": plat,
        "jax": jax.__version__,
        "torch": torch_version,
        "transformers": transformers_version,
        "dtype": args.dtype,
        "torch_dtype": args.torch_dtype,
        "remat": args.remat,
        "attention_impl": args.attention_impl,
        "threads": cpu_note,
        "peak": peak_text,
        "command": "python benchmarks/train_speed.py " + " ".join(argv or sys.argv[1:]),
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name, batch in plan:
        row = ROWS[name]
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            error = f"skipped: the time budget of {args.time_budget:.0f}s was spent"
            results.append({"row": name, "batch": batch, "seq": row.seq, "error": error})
            continue
        try:
            row_results = run_row(row, batch, args, peaks, device_counts)
        except Exception as e:  # e.g. out of memory at the largest batch: report it, go on
            print(f"{name} batch {batch}: FAILED: {type(e).__name__}: {e}", flush=True)
            first_line = str(e).splitlines()[0][:300] if str(e) else ""
            row_results = [{"row": name, "batch": batch, "seq": row.seq}]
            row_results[0]["error"] = f"{type(e).__name__}: {first_line}"
        for result in row_results:
            print(result, flush=True)
        results.extend(row_results)
        if args.out:  # after every row, so that a run cut short keeps what it measured
            pathlib.Path(args.out).write_text(format_table(results, header) + "\n")
    table = format_table(results, header)
    print(table, flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
