"""SIGTERM: stop at a safe point, leave nothing partial.

Kubernetes sends SIGTERM and waits ``terminationGracePeriodSeconds`` before SIGKILL. A worker
that gets it raises :class:`Terminated` in its main thread at the next bytecode boundary:
``Store.open_atomic`` discards the temporary file it was writing (nothing is renamed or
published), no marker is written, and the process exits with 143 (128 + SIGTERM), which
executors treat as retryable. The index runs again from scratch on its next attempt.
"""

from __future__ import annotations

import os
import signal
import threading

from preproc.errors import PreprocError

EXIT_TERMINATED = 143


class Terminated(PreprocError):
    """The process was asked to stop (SIGTERM)."""

    exit_code = EXIT_TERMINATED


busy = False    # set by preproc.engine.stages.run_index while an index runs


def _raise(signum, frame):  # noqa: ANN001 - signal handler signature
    # Restore the default first: a second SIGTERM during cleanup ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not busy:
        os._exit(EXIT_TERMINATED)     # idle (e.g. a pool worker being shut down): just go
    raise Terminated("terminated by SIGTERM; outputs of the running index were discarded")


def install() -> None:
    """Turn SIGTERM into :class:`Terminated` (only possible in the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)
