"""One writer per output: a lease with an expiry, taken and renewed by compare-and-swap.

``preproc run`` (and ``--force``) holds ``<out>/_lease/``; ``preproc refresh`` holds
``<root>/_state/lease/``. A second writer exits 75 (``EX_TEMPFAIL``) naming the holder.

**How.** The lease is a chain of versions, ``_lease/0000000001.json``, ``0000000002.json``, …;
the highest one is the lease's state (holder, expiry). Every change — take a free lease,
renew it, take over an expired one, release it — creates the *next* version with an
exclusive create, which only one contender can win:

* local disk / PVC: the content goes to a temporary file, then ``os.link`` publishes it
  (``O_EXCL`` semantics, atomic on POSIX and NFS; a reader never sees half a version);
* S3 and compatible stores: ``PutObject`` with ``If-None-Match: *`` (a conditional write).

So a take-over is compare-and-swap, never read-then-delete: two contenders that both saw
version *n* expired both try to create *n+1*, and one of them fails. The holder renews by
creating *n+1* too, so a holder that lost its lease learns it at its next renewal. Versions
below the current one are deleted by the holder; a version is only deleted once a higher
one exists, so the highest version never goes backwards (a late contender that re-creates a
deleted lower version sees the higher one when it lists, and withdraws). Releasing writes a
"released" version and keeps it. One algorithm on every store, and it needs only
``If-None-Match`` (which S3 has had since 2024; ``If-Match`` on PUT came later and is rarer
among compatible stores).

**Expiry.** A holder renews every ``ttl_s / 3`` from a heartbeat thread; a killed holder
stops renewing and its lease expires after at most ``ttl_s``. A holder on this machine
whose process is gone (same host and boot, pid dead or reused) is taken over at once, so
``kill -9`` and rerun does not wait for the expiry.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from preproc.errors import ConfigError, PreprocError
from preproc.faults import failpoint
from preproc.io import layout

if TYPE_CHECKING:
    from preproc.io.store import Store

__all__ = ["Lease", "LeaseHeld", "LeaseLost", "create_exclusive", "check_ttl", "EXIT_LOCKED",
           "RUN_LEASE", "RUN_TTL_S"]

log = logging.getLogger("preproc")

EXIT_LOCKED = 75     # EX_TEMPFAIL: another writer holds the output; try again later
RUN_LEASE = layout.RUN_LEASE
# A killed run on another machine blocks the next one for at most this long (a run on this
# machine whose process is gone is taken over at once).
RUN_TTL_S = 120.0

HOST = socket.gethostname()


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


BOOT_ID = _boot_id()


class LeaseHeld(PreprocError):
    """Another writer holds this output's lease."""

    exit_code = EXIT_LOCKED


class LeaseLost(LeaseHeld):
    """This writer's lease expired and another writer took it over: stop writing."""


def check_ttl(ttl_s: Any, key: str = "--lock-ttl") -> float:
    """A lease TTL in seconds: a finite number >= 1 (0 or less would mean a lease that is
    expired as soon as it is taken, i.e. no lease at all)."""
    try:
        v = float(ttl_s)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: must be a number of seconds, got {ttl_s!r}") from None
    if not math.isfinite(v) or v < 1:
        raise ConfigError(f"{key}: must be a finite number of seconds >= 1, got {ttl_s!r}")
    return v


def create_exclusive(store: Store, rel: str, data: bytes) -> bool:
    """Create ``rel`` with ``data`` only if it does not exist; False if it does.

    Local: the content goes to a temporary file first, then ``os.link`` publishes it (fails
    if the name exists; a reader never sees a half-written file). S3: a PUT with
    ``If-None-Match: *``.
    """
    path = store.path(rel)
    if store.local:
        d = os.path.dirname(path)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, layout.lease_temporary(uuid.uuid4().hex))
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    try:
        store.fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if any(s in str(e) for s in ("PreconditionFailed", "412", "ConditionalRequestConflict")):
            return False
        raise


class Lease:
    """A lease on ``store``'s ``rel`` folder for ``ttl_s`` seconds, renewed by a heartbeat.

    ``what`` names the writer in messages (``run``, ``refresh``); ``clock`` (seconds,
    default ``time.time``) is injectable so that tests expire leases without sleeping;
    ``heartbeat=False`` leaves renewals to the caller.

    >>> with Lease(Store("/data/out"), "_lease", ttl_s=120, what="run") as lease:   # doctest: +SKIP
    ...     ...              # lease.check() raises LeaseLost if another writer took over
    """

    def __init__(self, store: Store, rel: str = RUN_LEASE, *, ttl_s: float = RUN_TTL_S, what: str = "run",
                 clock: Callable[[], float] = time.time, heartbeat: bool = True):
        self.store, self.rel, self.what, self.clock = store, rel.rstrip("/"), what, clock
        self.ttl_s = check_ttl(ttl_s, "lease ttl_s")
        self.heartbeat = heartbeat
        self.owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.version = 0          # the version this holder wrote last (0: not held)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._mutex = threading.Lock()

    # -- the chain ----------------------------------------------------------------------
    def _name(self, n: int) -> str:
        return layout.lease_version(self.rel, n)

    def _versions(self) -> list[int]:
        return sorted(int(n[:-5]) for n in self.store.ls(self.rel) if n.endswith(".json") and n[:-5].isdigit())

    def _read(self, n: int) -> dict[str, Any] | None:
        try:
            d = self.store.read_json(self._name(n))
        except (FileNotFoundError, ValueError):
            return None
        return d if isinstance(d, dict) else None

    def current(self) -> tuple[int, dict[str, Any] | None]:
        """(highest version, its state) — (0, None) when the lease was never taken."""
        for _ in range(5):
            vs = self._versions()
            if not vs:
                return 0, None
            state = self._read(vs[-1])
            if state is not None:
                return vs[-1], state
            # Deleted between the listing and the read (a newer version exists): list again.
        return vs[-1], {}

    def _body(self, *, released: bool = False) -> dict[str, Any]:
        now = self.clock()
        return {"owner": self.owner, "what": self.what, "host": HOST, "pid": os.getpid(),
                "pid_start": _start_ticks(os.getpid()), "boot_id": BOOT_ID, "write_id": uuid.uuid4().hex,
                "renewed_s": now, "expires_s": now if released else now + self.ttl_s, "released": released}

    def _advance(self, n: int, body: dict[str, Any]) -> bool:
        """Compare-and-swap: make ``body`` version ``n + 1``; False if another writer did first."""
        rel = self._name(n + 1)
        data = json.dumps(body, sort_keys=True).encode()
        if not create_exclusive(self.store, rel, data):
            # A retried PUT whose first try succeeded finds its own version: that is a win.
            if (self._read(n + 1) or {}).get("write_id") != body["write_id"]:
                return False
        vs = self._versions()
        if vs and vs[-1] > n + 1:
            # We re-created a version the holder had already superseded and deleted: withdraw.
            self.store.rm(rel)
            return False
        for old in vs:
            if old < n + 1:
                try:
                    self.store.rm(self._name(old))
                except FileNotFoundError:
                    pass
        return True

    # -- holders ------------------------------------------------------------------------
    def _free(self, state: dict[str, Any] | None) -> str | None:
        """Why the lease in ``state`` may be taken (None: it is held)."""
        if state is None:
            return "free"
        if state.get("released"):
            return "released"
        if float(state.get("expires_s") or 0) <= self.clock():
            return "expired"
        pid = state.get("pid")
        if (BOOT_ID is not None and state.get("host") == HOST and state.get("boot_id") == BOOT_ID
                and isinstance(pid, int) and pid != os.getpid()):
            started = _start_ticks(pid)     # None: no such process (Linux: /proc)
            if started is None or (state.get("pid_start") is not None and started != state["pid_start"]):
                return "dead"
        return None

    def describe(self, state: dict[str, Any] | None) -> str:
        if not state:
            return "nobody"
        left = max(0, int(float(state.get("expires_s") or 0) - self.clock()))
        return (f"{state.get('what', 'writer')} {state.get('owner')} (pid {state.get('pid')} on "
                f"{state.get('host')}, lease valid {left}s more unless renewed)")

    def acquire(self) -> Lease:
        for _ in range(8):
            n, state = self.current()
            why = self._free(state)
            if why is None:
                raise LeaseHeld(f"{self.store.url()}: held by another {self.describe(state)}; not starting, "
                                f"try again later")
            if why in ("expired", "dead"):
                # Chaos tests pause here: two contenders that both saw the lease expired.
                failpoint("lease_takeover")
            body = self._body()
            if self._advance(n, body):
                if why in ("expired", "dead"):
                    log.warning("%s: took over the lease of %s (%s)", self.store.url(self.rel),
                                state.get("owner"), "holder gone" if why == "dead" else "expired")
                self.version = n + 1
                self.lost = None
                if self.heartbeat:
                    self._stop.clear()
                    self._beat = threading.Thread(target=self._heartbeat, name="preproc-lease", daemon=True)
                    self._beat.start()
                return self
        raise LeaseHeld(f"{self.store.url(self.rel)}: could not take the lease (contended); try again later")

    def renew(self) -> None:
        """Extend the lease by ``ttl_s``; raises :class:`LeaseLost` if another writer has it."""
        with self._mutex:
            if self.lost:
                raise LeaseLost(self.lost)
            if not self.version:
                raise LeaseLost(f"{self.store.url(self.rel)}: the lease is not held")
            if not self._advance(self.version, self._body()):
                _, state = self.current()
                self.lost = (f"{self.store.url(self.rel)}: lost the lease to {self.describe(state)}; "
                             f"stopping (another writer took it over after it expired)")
                raise LeaseLost(self.lost)
            self.version += 1

    def check(self, *_: Any) -> None:
        """Raise :class:`LeaseLost` if the heartbeat found the lease taken over."""
        if self.lost:
            raise LeaseLost(self.lost)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except LeaseLost as e:
                log.error("%s", e)
                return
            except Exception as e:  # noqa: BLE001 - a storage hiccup: try again next beat
                log.warning("%s: lease renewal failed: %s", self.store.url(self.rel), e)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        with self._mutex:
            if self.version and not self.lost:
                try:
                    self._advance(self.version, self._body(released=True))
                except Exception as e:  # noqa: BLE001 - it expires anyway
                    log.warning("%s: could not release the lease (it expires in %ds): %s",
                                self.store.url(self.rel), int(self.ttl_s), e)
            self.version = 0

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

