#!/usr/bin/env python
"""Per-rule drop table of the quality filters on the shared corpus, per collection.

Each filter runs alone after ``normalize`` and ``langid`` (which labels the documents the
language-scoped rules look at), so a rule's count is what that filter removes by itself,
not what is left after the others. Rows: ``<step>:<reason>``; columns: collections
(``source`` without the locale, English separately); cells: documents dropped and the
percentage of the collection.

    python scripts/filter_drops.py                      # v1 and v2 of every quality filter
    python scripts/filter_drops.py --steps fineweb_v2 c4_v2 --json /tmp/drops.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preproc.clean.steps import CleanPipeline, build_steps  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "corpus"
STEPS = ("gopher_quality_v1", "gopher_quality_v2", "gopher_repetition_v1", "c4_v1", "c4_v2",
         "fineweb_v1", "fineweb_v2")


def load(corpus: Path) -> pa.Table:
    rows = []
    for f in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(f, "rb") as fh:
            rows.extend(orjson.loads(line) for line in fh)
    return pa.Table.from_pylist(rows)


def collection(source: str) -> str:
    coll, _, lang = source.partition("/")
    return source if lang == "en" or coll == "code" else f"{coll}/*"


def prepared(table: pa.Table) -> list[pa.RecordBatch]:
    """The corpus after normalize and langid, in batches of 512 documents."""
    pre = CleanPipeline(build_steps({"defaults": False, "normalize": True, "langid": True}))
    return [pre(b).kept for b in table.to_batches(max_chunksize=512)]


def drops(batches: list[pa.RecordBatch], step: str, by=None) -> Counter:
    """(collection, reason) -> documents ``step`` drops when it runs alone after langid;
    (collection, "@chars_in") and (collection, "@chars_kept") -> characters (C4 removes
    lines from the documents it keeps)."""
    by = by or collection
    spec = {"defaults": False, step: True}
    only = CleanPipeline([s for s in build_steps(spec) if s.name == step], keep_removed=True)
    out: Counter = Counter()
    for b in batches:
        res = only(b)
        for src, t in zip(b.column("source").to_pylist(), b.column("text").to_pylist()):
            out[(by(src), "@chars_in")] += len(t)
        for src, t in zip(res.kept.column("source").to_pylist(), res.kept.column("text").to_pylist()):
            out[(by(src), "@chars_kept")] += len(t)
        if res.removed is not None:
            for src, why in zip(res.removed.column("source").to_pylist(),
                                res.removed.column("reason").to_pylist()):
                out[(by(src), why)] += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--steps", nargs="+", default=list(STEPS))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--by-locale", action="store_true", help="one column per source")
    a = ap.parse_args(argv)
    table = load(a.corpus)
    by = (lambda s: s) if a.by_locale else collection
    docs = Counter(by(s) for s in table.column("source").to_pylist())
    batches = prepared(table)
    colls = sorted(docs)
    result: dict = defaultdict(dict)
    print("documents dropped per rule (each step alone after normalize + langid); "
          "% of the collection")
    print(f"{'rule':44s}" + "".join(f"{c[:15]:>16s}" for c in colls))
    print(f"{'(documents)':44s}" + "".join(f"{docs[c]:16d}" for c in colls))
    for step in a.steps:
        d = drops(batches, step, by)
        total = Counter()
        for (c, why), k in d.items():
            if not why.startswith("@"):
                total[c] += k
            result[why if not why.startswith("@") else step + why][c] = k
        for why in sorted({w for _, w in d if not w.startswith("@")}):
            print(f"{why:44s}" + "".join(
                f"{d[(c, why)]:8d} {100 * d[(c, why)] / docs[c]:5.1f}%" if d[(c, why)] else f"{'.':>16s}"
                for c in colls))
        print(f"{step + ' (all rules)':44s}" + "".join(
            f"{total[c]:8d} {100 * total[c] / docs[c]:5.1f}%" for c in colls))
        print(f"{step + ' (% of characters kept)':44s}" + "".join(
            f"{100 * d[(c, '@chars_kept')] / max(d[(c, '@chars_in')], 1):15.1f}%" for c in colls),
            flush=True)
        result[step + ":*"] = dict(total)
    if a.json:
        a.json.write_text(json.dumps({"docs": docs, "drops": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
