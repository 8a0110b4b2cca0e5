"""`config.profile_steps`: a `jax.profiler` trace of some train steps, in WORKDIR/profile.

    --config.profile_steps=10,15   # steps 10..14 (1-based step numbers, as logged)
    --config.profile_steps=5       # 5 steps, starting 3 steps after the (re)start

The trace (an XPlane `.xplane.pb` plus a Perfetto `.trace.json.gz` per host) opens in
TensorBoard's profile plugin, XProf or ui.perfetto.dev. The first step after a start compiles,
so by default the window begins a few steps later. Every process writes its own trace.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
from absl import logging

# Steps after a (re)start before a count-only window opens: past compilation and warm-up.
_SKIP_AFTER_START = 3


def parse_profile_steps(value: Any, start_step: int) -> tuple[int, int] | None:
    """(first, stop) step numbers of the window (first included, stop excluded), or None.

    `value`: "" / 0 / None (off), a count N (N steps from `start_step + 3 + 1` on), or
    "FIRST,STOP". Bad values raise a ValueError naming `config.profile_steps`.
    """
    if value in (None, "", 0, "0"):
        return None
    text = str(value).strip()
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        first = start_step + _SKIP_AFTER_START + 1
        return first, first + parts[0]
    if len(parts) == 2 and 1 <= parts[0] < parts[1]:
        return parts[0], parts[1]
    raise ValueError(
        f"config.profile_steps={value!r}: expected a step count N > 0 or 'FIRST,STOP' with "
        "1 <= FIRST < STOP (step numbers as logged)"
    )


class StepProfiler:
    """Starts a trace before step `first` and stops it once step `stop - 1` has finished."""

    def __init__(self, value: Any, workdir: str | pathlib.Path, start_step: int):
        self.window = parse_profile_steps(value, start_step)
        self.directory = pathlib.Path(workdir) / "profile"
        self._active = False

    def before_step(self, step: int) -> None:
        """Call with the number of the step about to run (1-based, as logged)."""
        if self.window is not None and step == self.window[0] and not self._active:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self._active = True
            logging.info("profiling steps %d..%d into %s", *self.window, self.directory)

    def after_step(self, step: int, outputs: Any) -> None:
        """Call after dispatching step `step`; waits for it only when the window closes."""
        if self._active and step >= self.window[1] - 1:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self._active:
            jax.profiler.stop_trace()
            self._active = False
            logging.info("profile written to %s", self.directory)
