"""Loading a spec: YAML (a path, an ``s3://`` URI, a string), a dict or a :class:`Spec`, plus
overrides from the command line or :func:`preproc.run`'s keywords; one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from preproc.errors import ConfigError, format_error
from preproc.io.s3 import read_text
from preproc.spec.model import Spec

__all__ = ["load_spec"]


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("input", "inputs"):
            raw.setdefault("input", {})["paths"] = [value] if isinstance(value, str) else list(value)
        elif key == "output":
            raw["output"] = str(value)
        elif key == "shards":
            raw["shards"] = value
        elif key in ("workers", "threads_per_worker"):
            raw.setdefault("executor", {})[key] = value
        elif key == "executor":
            raw.setdefault("executor", {})["kind"] = value
        elif key == "tokenizer":
            raw.setdefault("tokenize", {})["tokenizer"] = str(value)
        else:
            # Dotted keys reach anything: ``{"clean.length.min_words": 5}``.
            node = raw
            parts = key.split(".")
            for p in parts[:-1]:
                nxt = node.get(p)
                if not isinstance(nxt, dict):
                    nxt = {}
                    node[p] = nxt
                node = nxt
            node[parts[-1]] = value
    return raw


def load_spec(spec: Spec | str | Path | dict[str, Any], **overrides: Any) -> Spec:
    """Read and validate a spec from a YAML path, a YAML string, a dict or a :class:`Spec`.

    Overrides win over the file: ``input`` (str or list), ``output``, ``shards``, ``workers``,
    ``executor`` (kind), ``tokenizer``, and dotted keys such as ``clean.length.min_words``.

    >>> load_spec({"input": {"paths": ["data/*.jsonl"]}}, output="out").output
    'out'
    """
    where = "spec"
    if isinstance(spec, Spec):
        raw = spec.to_json()
    elif isinstance(spec, dict):
        raw = spec
    else:
        text = str(spec)
        if isinstance(spec, Path) or ("\n" not in text and text.endswith((".yaml", ".yml", ".json"))):
            where = text
            try:
                text = read_text(text)   # specs may live on S3 or a ConfigMap mount
            except FileNotFoundError:
                raise ConfigError(f"{where}: spec file not found") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{where}: not valid YAML{pos}: {getattr(e, 'problem', e)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: the spec must be a mapping with at least an 'input' key")
    raw = _apply_overrides(raw, overrides)
    try:
        return Spec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_error(e, where, Spec)) from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
