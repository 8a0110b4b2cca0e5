"""Training-metric writers: WORKDIR/metrics.jsonl, TensorBoard events, a console progress line.

Only process 0 writes; on other processes a `MetricWriter` is a no-op, so the loop can call it
unconditionally. (Task metrics such as GLUE's Pearson or MCC live with their tasks.)
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging

# bfloat16 dense matmul peak per JAX device (datasheets). MFU is reported only for these.
_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6", 918e12),  # v6e ("TPU v6 lite")
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),  # v5p
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
)


def model_flops_per_step(
    cfg: Any, batch_size: int, seq_len: int, masked_positions: int = 0
) -> float:
    """Model FLOPs of one train step (forward + 2 x forward backward) of `cfg` (a ModelConfig).

    Only the matmuls the model needs (embedding lookups, LayerNorm, softmax, GELU and the
    optimizer are not counted; nor is remat's recomputation), 2 FLOPs per multiply-add:

        per token per layer   2 (4 H^2 + 2 H I)      Q, K, V, output, FFN
                            + 4 T H                  QK^T and AV (bidirectional)
                            + 4 (T + 1) / 2 H        (causal: a query sees (T+1)/2 keys)
        BERT pretraining      + B (2 H^2 + 4 H)      pooler + NSP on [CLS]
                              + B P (2 H^2 + 2 H V)  MLM transform + tied decoder at P masked slots
        classification        + B (2 H^2 + 2 H C)    pooler + classifier
        GPT-2                 + B T 2 H V            tied LM head at every position

    i.e. 6 N per token for the N parameters a token multiplies, plus the attention term. MFU is
    this times steps/s over the devices' peak.
    """
    h, i, v, layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    b, t = batch_size, seq_len
    dense = 2 * (4 * h * h + 2 * h * i)
    if cfg.head == "causal_lm":
        forward = b * t * layers * (dense + 4 * (t + 1) / 2 * h) + b * t * 2 * h * v
    else:
        forward = b * t * layers * (dense + 4 * t * h)
        if cfg.head in ("pretraining", "mlm"):
            positions = masked_positions or t
            forward += b * positions * (2 * h * h + 2 * h * v)
        if cfg.head == "pretraining":
            forward += b * (2 * h * h + 2 * 2 * h)
        elif cfg.head == "classification":
            forward += b * (2 * h * h + 2 * h * cfg.num_labels)
        elif cfg.head == "encoder":
            forward += b * 2 * h * h  # pooler
    return 3.0 * forward


def peak_flops_for_kind(kind: str) -> float | None:
    """bfloat16 datasheet peak FLOP/s of a device kind ("NVIDIA H200", "TPU v4"), or None."""
    for marker, flops in _PEAK_FLOPS:
        if marker.lower() in kind.lower():
            return flops
    return None


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """bfloat16 peak FLOP/s of one device of this kind, or None when unknown (e.g. CPU)."""
    device = device or jax.devices()[0]
    return peak_flops_for_kind(getattr(device, "device_kind", ""))


class MetricWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops records of steps after `step`: a resumed run re-does (and re-logs) them."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill -9
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(value: object) -> object:
    """A JSON-able Python scalar, at full precision (resumed runs are compared bit for bit)."""
    if hasattr(value, "item"):
        value = value.item()
    return value


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# Metrics shown on the console line, in this order, when present.
_CONSOLE_KEYS = ("loss", "mlm_accuracy", "nsp_accuracy", "accuracy", "perplexity", "learning_rate")


def progress_line(
    step: int, total_steps: int, metrics: Mapping[str, float], steps_per_sec: float
) -> str:
    """'step 150/2000 (8%) | loss 5.12 | ... | 3.1 steps/s | ETA 9m56s'."""
    parts = [f"step {step}/{total_steps} ({100 * step / total_steps:.0f}%)"]
    for key in _CONSOLE_KEYS:
        if key in metrics:
            value = float(metrics[key])
            parts.append(f"{key} {value:.3g}" if key == "learning_rate" else f"{key} {value:.4f}")
    if "examples_per_sec" in metrics:
        parts.append(f"{metrics['examples_per_sec']:.1f} ex/s")
    if "mfu" in metrics:
        parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
    if steps_per_sec > 0:
        parts.append(f"ETA {format_duration((total_steps - step) / steps_per_sec)}")
    return " | ".join(parts)


def log_console(line: str) -> None:
    if jax.process_index() == 0:
        logging.info("%s", line)
