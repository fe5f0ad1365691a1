"""``python -m preproc.k8s.demo ROOT``: write the demo inputs and tokenizer, run nothing.

The init container of ``manifests/overlays/demo`` runs this on the data volume, so the
coordinator then plans and runs ``manifests/base/spec.yaml`` (inputs ``ROOT/input/*``,
tokenizer ``ROOT/tokenizer.json``) on the cluster. Idempotent: a second run keeps what is
there, so a restarted coordinator pod plans the same run and adopts its Jobs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from preproc.demo import make_corpus, train_tokenizer


def write_demo_inputs(root: str | Path) -> Path:
    """The same corpus and tokenizer as ``preproc demo``, under ``root``; returns root."""
    root = Path(root)
    inputs, tok = root / "input", root / "tokenizer.json"
    if not (inputs.is_dir() and any(inputs.iterdir())):
        make_corpus(inputs)
    if not tok.exists():
        texts = []
        for p in sorted(inputs.glob("*.jsonl")):
            texts += [json.loads(line)["text"] for line in p.read_bytes().splitlines()
                      if line.startswith(b'{"id": "demo')]
        tmp = root / ".tokenizer.json.tmp"
        train_tokenizer(texts, tmp)
        tmp.replace(tok)  # atomic: a killed init container leaves no half tokenizer
    return root


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m preproc.k8s.demo ROOT", file=sys.stderr)
        return 2
    root = write_demo_inputs(args[0])
    print(f"demo inputs in {root}/input, tokenizer {root}/tokenizer.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
