"""What preproc may write and delete: only outputs it owns, never its inputs.

* **The run record.** A folder (or object-store prefix) is a preproc run output only when
  it holds ``plan.json`` written by preproc (a plan with ``run_id``, ``stages`` and the
  ``writes`` list); a refresh dataset root only when it holds ``_state/state.json``. The
  record is the first file a run writes.
* **First runs** go into an empty folder, or one that does not exist yet: a non-empty folder
  without a record is refused (exit 2, naming the first foreign entry), ``--force`` or not.
* **--force** removes only the top-level entries the recorded plan lists in ``writes``
  (the folders and files preproc created there); anything else in the folder stays.
* **Inputs are never inside the output**: an output that equals, contains or lies inside an
  input path is refused (links resolved; local paths and object-store prefixes alike), as
  are ``/`` and the home folder.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from typing import TYPE_CHECKING, Any

from preproc.errors import ConfigError
from preproc.io import layout
from preproc.io.listing import GLOB_CHARS

if TYPE_CHECKING:
    from preproc.io.store import Store
    from preproc.spec.model import Spec

__all__ = ["check_paths", "check_run_output", "check_dataset_root", "run_writes", "remove_run",
           "RUN_ENTRIES", "RECORD"]

RECORD = layout.PLAN
# What a run writes at the top of its output (besides one folder per stage); a plan records
# the list it wrote, and `--force` removes exactly those names.
RUN_ENTRIES = (layout.PLAN, layout.PLAN_SPLITS, layout.TOKENIZER, layout.DATASET, layout.STATS, layout.REPORT, layout.REJECTS,
               layout.REMOVED, layout.CLEAN, layout.EXACT_DEDUP, layout.TOKENS, layout.FINALIZE, layout.NEAR,
               layout.METRICS, layout.HEARTBEAT)
# Our own leftovers that never make a folder foreign: the lease and temporary files of an
# interrupted atomic write (named by preproc.io.layout).
_OURS = layout.LEFTOVER


def run_writes(stage_names: list[str]) -> list[str]:
    """The top-level names a run with these stages writes (recorded in ``plan.json``)."""
    return sorted(set(RUN_ENTRIES) | set(stage_names))


# -- inputs vs output ---------------------------------------------------------------------

def _where(uri: str) -> tuple[str, str]:
    """(store, absolute path) with links resolved locally: ``("file", "/a/b")``,
    ``("s3", "bucket/key")``."""
    if "://" in uri:
        proto, rest = uri.split("://", 1)
        proto = {"s3a": "s3", "local": "file"}.get(proto, proto)
        if proto != "file":
            return proto, posixpath.normpath("/" + rest).lstrip("/") or ""
        uri = rest
    return "file", os.path.realpath(os.path.expanduser(uri))


def _inside(child: str, parent: str) -> bool:
    if parent in ("", "/"):
        return True
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _glob_base(pattern: str) -> tuple[str, str]:
    """(folder before the first glob character, the pattern's rest)."""
    cut = min(pattern.find(c) for c in GLOB_CHARS if c in pattern)
    head = pattern[:cut]
    base = head if head.endswith("/") else posixpath.dirname(head)
    return base, pattern[len(base):].lstrip("/")


def check_paths(spec: Spec) -> None:
    """Refuse an output that would overwrite or delete inputs, or a whole filesystem/home.

    A glob input (``data/*.jsonl``) stands for its folder, ``data``; an output inside that
    folder is allowed only when the glob cannot reach into it (one path level, no ``**``).
    """
    if not spec.output:
        return
    okind, opath = _where(spec.output)
    if okind == "file":
        home = os.path.realpath(os.path.expanduser("~"))
        if opath == "/" or opath == home:
            raise ConfigError(f"output: {spec.output!r} is {'the root folder' if opath == '/' else 'your home folder'}; "
                              f"choose a folder of its own for the run")
    for pattern in spec.input.paths:
        glob = any(c in pattern for c in GLOB_CHARS)
        base, rest = _glob_base(pattern) if glob else (pattern, "")
        ikind, ipath = _where(base or ".")
        if ikind != okind:
            continue
        if _inside(ipath, opath):
            what = "is" if ipath == opath else "contains"
            raise ConfigError(f"output: {spec.output!r} {what} the input {pattern!r}; a run (or --force) would "
                              f"overwrite or delete its own inputs: choose another output")
        if _inside(opath, ipath):
            if glob and "/" not in rest and "**" not in rest:
                continue    # one level of `base`: the output's contents never match
            if not glob and ikind == "file" and os.path.isfile(ipath):
                continue
            raise ConfigError(f"output: {spec.output!r} lies inside the input {pattern!r}; its files would "
                              f"become inputs of later runs: choose an output outside it")


# -- run records ----------------------------------------------------------------------------

def _record(store: Store) -> dict[str, Any] | None:
    """The run record's content, None when absent; ConfigError when it is not preproc's."""
    try:
        d = json.loads(store.read_bytes(RECORD))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{store.url(RECORD)}: not a preproc run record (not JSON); this folder is not a "
                          f"preproc output: choose another output") from None
    if not (isinstance(d, dict) and isinstance(d.get("run_id"), str) and isinstance(d.get("stages"), list)):
        raise ConfigError(f"{store.url(RECORD)}: not a preproc run record; this folder is not a preproc "
                          f"output: choose another output")
    return d


# What preproc's own folders of leftovers hold (besides temporaries): a folder of that name
# holding anything else is the user's.
_OURS_INSIDE = {layout.PLAN_SPLITS: re.compile(r"^shard-\d{5,}\.json$"), layout.RUN_LEASE: re.compile(r"^\d+\.json$")}
_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


def _foreign(store: Store, allowed: set[str] = frozenset()) -> str | None:
    for name in store.ls(""):
        if name in allowed:
            continue
        if not _OURS.match(name):
            return name
        inside = _OURS_INSIDE.get(name)
        if inside is not None:
            # A killed run leaves its shard lists or lease with no plan.json; a folder of the
            # same name holding anything else (or a file of that name) is not ours.
            if not store.isdir(name):
                return name
            for child in store.ls(name):
                if not (inside.match(child) or _TEMPORARY.match(child)):
                    return f"{name}/{child}"
    return None


def check_run_output(store: Store) -> dict[str, Any] | None:
    """The output's run record (None for a new, empty output); ConfigError if the folder
    holds something else: a first run never writes into a non-empty folder."""
    rec = _record(store)
    if rec is not None:
        return rec
    first = _foreign(store)
    if first is not None:
        hint = (" (it holds a refresh dataset: use `preproc refresh`)" if first in (layout.STATE_DIR, layout.GENERATIONS)
                else "")
        raise ConfigError(f"output: {store.url()} is not empty and holds no preproc run record (plan.json); "
                          f"first foreign entry: {first!r}{hint}. preproc writes only into an empty folder or "
                          f"its own earlier output: choose another output")
    return None


def check_dataset_root(store: Store, state_rel: str) -> bool:
    """True if ``store`` is a refresh dataset root already (holds ``state_rel``); False when
    it is new (empty, but for our lease); ConfigError when it holds anything else."""
    if store.exists(state_rel):
        return True
    first = _foreign(store, {layout.STATE_DIR})
    if first is None:
        state_dir = posixpath.dirname(state_rel)
        first = next((f"{state_dir}/{n}" for n in store.ls(state_dir) if n != posixpath.basename(layout.REFRESH_LEASE)), None)
    if first is not None:
        raise ConfigError(f"output: {store.url()} is not empty and holds no preproc dataset record "
                          f"({state_rel}); first foreign entry: {first!r}. refresh writes only into an empty "
                          f"folder or its own dataset root: choose another output")
    return False


def remove_run(store: Store, rec: dict[str, Any]) -> list[str]:
    """``--force``: remove what the recorded run wrote (its ``writes``; older plans: the
    fixed names plus its stages), the record last. Returns the names removed."""
    names = rec.get("writes")
    if not isinstance(names, list):
        names = run_writes([s.get("name") for s in rec.get("stages", []) if isinstance(s, dict)])
    removed = []
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name in (".", "..", RECORD):
            continue
        if store.exists(name):
            store.rm(name)
            removed.append(name)
    store.rm(RECORD)
    return removed + [RECORD]

