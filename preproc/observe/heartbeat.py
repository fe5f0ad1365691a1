"""The coordinator's heartbeat: ``<out>/_coordinator.json``, so that a reader of the output
(``preproc status``) can tell a running run from one whose coordinator is gone.

From markers alone a run whose coordinator was killed looks like a running one forever
(``[running] … ETA 9s``). The coordinator rewrites this small object through the Store every
:data:`INTERVAL_S` seconds while it executes stages, and once more when it leaves
(``state``: ``finished``, ``failed`` or ``interrupted``). A ``running`` heartbeat older than
:data:`STALE_AFTER` intervals means the coordinator stopped without a word (SIGKILL, a lost
node, an evicted pod): status then says the run stopped, and when it was last seen.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from preproc.io import layout

if TYPE_CHECKING:
    from preproc.io.store import Store

__all__ = ["Heartbeat", "HEARTBEAT", "INTERVAL_S", "STALE_AFTER", "coordinator_state"]

log = logging.getLogger("preproc")

HEARTBEAT = layout.HEARTBEAT   # the file, named by the output layout
INTERVAL_S = 10.0
STALE_AFTER = 3.0   # intervals without a beat before a "running" coordinator counts as gone


class Heartbeat:
    """``with Heartbeat(store):`` beats while the block runs and records how it ended."""

    def __init__(self, store: Store, *, interval_s: float = INTERVAL_S):
        self.store = store
        self.interval_s = interval_s
        self.started_s = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, state: str) -> None:
        now = time.time()
        body: dict[str, Any] = {"state": state, "host": socket.gethostname(), "pid": os.getpid(),
                                "started_s": self.started_s, "heartbeat_s": now, "interval_s": self.interval_s}
        if state != "running":
            body["ended_s"] = now
        try:
            self.store.write_json(HEARTBEAT, body)
        except Exception:  # noqa: BLE001 - a missed beat must never stop a run
            log.debug("writing the coordinator heartbeat failed", exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write("running")

    def __enter__(self) -> Heartbeat:
        self._write("running")
        self._thread = threading.Thread(target=self._loop, name="preproc-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None:
            state = "finished"
        elif issubclass(exc_type, KeyboardInterrupt):
            state = "interrupted"
        else:
            state = "failed"
        self._write(state)


def coordinator_state(hb: dict[str, Any] | None, now: float) -> tuple[str | None, float | None]:
    """(``running`` | ``stopped`` | ``finished`` | ``failed`` | ``interrupted`` | None, since when).

    ``stopped``: the heartbeat says running but is older than :data:`STALE_AFTER` intervals;
    ``since`` is then the last beat. None: no heartbeat (a run from before heartbeats)."""
    if not isinstance(hb, dict) or "heartbeat_s" not in hb:
        return None, None
    beat = float(hb["heartbeat_s"])
    state = str(hb.get("state", "running"))
    if state == "running":
        if now - beat > STALE_AFTER * float(hb.get("interval_s") or INTERVAL_S):
            return "stopped", beat
        return "running", beat
    return state, float(hb.get("ended_s") or beat)
