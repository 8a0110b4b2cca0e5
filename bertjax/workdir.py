"""The run directory before training: writable, and held by one run at a time.

`acquire(workdir)` (process 0 of a job) checks that the directory can be created and written
(so that an unwritable `--workdir` fails before minutes of data preparation and compilation)
and takes ``WORKDIR/.lock``: a JSON file with the host, pid and start time of the run holding
it, and a heartbeat that a background thread refreshes. A second run on the same directory
refuses at once, naming the holder. A lock is stale, and taken over with a warning, when its
pid is no longer alive on this host, or when its heartbeat is older than `STALE_AFTER_S`
(a run on another host that died without releasing it).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import threading
import time
from typing import Any

from absl import logging

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # 20 missed heartbeats


class WorkdirError(RuntimeError):
    """The run directory cannot be used: not writable, or held by another run."""


def check_writable(workdir: pathlib.Path) -> None:
    """Creates `workdir` if needed and writes a probe file; a WorkdirError says why not."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(
            f"--workdir {workdir} is not writable ({e.strerror or e}); checkpoints and metrics "
            "go there. Pick another directory or fix its permissions."
        ) from e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(lock: dict[str, Any], now: float | None = None) -> str | None:
    """Why a lock's holder is gone (None while it looks alive)."""
    now = time.time() if now is None else now
    if lock.get("host") == socket.gethostname() and not _pid_alive(int(lock.get("pid", -1))):
        return f"pid {lock.get('pid')} is not running on this host"
    age = now - float(lock.get("heartbeat", 0))
    if age > STALE_AFTER_S:
        return f"its heartbeat is {age:.0f}s old (> {STALE_AFTER_S:.0f}s)"
    return None


class WorkdirLock:
    """Holds ``WORKDIR/.lock`` until `release` (a context manager too)."""

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / LOCK_NAME
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> WorkdirLock:
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock")
            self._thread.start()
            return self
        raise WorkdirError(f"could not take {self.path}: another run took it meanwhile")

    def _handle_existing(self) -> None:
        try:
            lock = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:  # a half-written lock: its writer died at once
            if time.time() - self.path.stat().st_mtime < HEARTBEAT_S:
                raise WorkdirError(f"{self.path} is being written by another run: {e}") from e
            lock = {}
        reason = stale_reason(lock) if lock else "it is unreadable"
        if reason is None:
            raise WorkdirError(
                f"{self.path.parent} is in use by another run: host {lock.get('host')}, pid "
                f"{lock.get('pid')}, started {lock.get('started')} (heartbeat "
                f"{time.time() - float(lock.get('heartbeat', 0)):.0f}s ago). Stop it or use "
                f"another --workdir; if that run is gone, delete {self.path}."
            )
        logging.warning("taking over the stale lock %s (%s): %s", self.path, reason, lock)
        self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.info["heartbeat"] = time.time()
            tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(self.info))
                os.replace(tmp, self.path)
            except OSError as e:  # a full disk must not kill the run; the next beat retries
                logging.warning("could not refresh %s: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(workdir: str | os.PathLike, *, lock: bool) -> WorkdirLock | None:
    """Checks `workdir` is writable and (if `lock`) locks it; see the module docstring.

    Remote paths (gs://...) are neither probed nor locked (no atomic create there).
    """
    text = os.fspath(workdir)
    if "://" in text:
        return None
    path = pathlib.Path(text).absolute()
    check_writable(path)
    return WorkdirLock(path).acquire() if lock else None
