"""Loading the HF tokenizer, resolving BOS/EOS, and pinning it to the run.

The coordinator reads the tokenizer once (path or any fsspec URI), records its sha256,
vocabulary size and special ids in the plan, and copies it to ``OUTPUT/tokenizer.json``.
Workers load that copy, so a pod never needs the user's original path, and a tokenizer
that changed after planning is an error, not a silent mix of two vocabularies.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tokenizers import Tokenizer

from .config import TokenizeSpec
from .errors import ConfigError
from .storage import Store, read_bytes

__all__ = ["inspect_tokenizer", "load_run_tokenizer"]

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<｜end▁of▁sentence｜>", "<|end_of_text|>", "<eos>",
                   "<|im_end|>", "[SEP]")
_BOS_CANDIDATES = ("<｜begin▁of▁sentence｜>", "<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>",
                   "[CLS]")

_CACHE: dict[str, Tokenizer] = {}


def _resolve(tok: Tokenizer, want: bool | str, candidates: tuple[str, ...], what: str) -> tuple[int | None, str | None]:
    if want is False:
        return None, None
    if isinstance(want, str):
        tid = tok.token_to_id(want)
        if tid is None:
            raise ConfigError(f"tokenize.{what}: token {want!r} is not in the tokenizer's vocabulary")
        return tid, want
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    for c in candidates:
        if c in added and tok.token_to_id(c) is not None:
            return tok.token_to_id(c), c
    for c in candidates:
        if tok.token_to_id(c) is not None:
            return tok.token_to_id(c), c
    raise ConfigError(f"tokenize.{what}: the tokenizer has no known {what.upper()} token; name it "
                      f"(tokenize.{what}: '<token>') or set tokenize.{what}: false")


def inspect_tokenizer(cfg: TokenizeSpec, storage_options: dict[str, Any] | None = None) -> tuple[dict[str, Any], bytes]:
    """Read and check the spec's tokenizer; return its plan entry and its bytes."""
    if not cfg.tokenizer:
        raise ConfigError("tokenize.tokenizer: no tokenizer; set it in the spec or pass --tokenizer PATH")
    try:
        data = read_bytes(cfg.tokenizer, storage_options)
    except FileNotFoundError:
        raise ConfigError(f"tokenize.tokenizer: {cfg.tokenizer} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"tokenize.tokenizer: {cfg.tokenizer} is a folder; name its tokenizer.json") from None
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise ConfigError(f"tokenize.tokenizer: {cfg.tokenizer} is not a readable tokenizer.json: "
                          f"{str(e).splitlines()[0][:200]}") from None
    vocab = tok.get_vocab(with_added_tokens=True)
    max_id = max(vocab.values()) if vocab else 0
    eos_id, eos = _resolve(tok, cfg.eos, _EOS_CANDIDATES, "eos")
    bos_id, bos = _resolve(tok, cfg.bos, _BOS_CANDIDATES, "bos")
    info = {
        "source": cfg.tokenizer,
        "path": "tokenizer.json",
        "sha256": hashlib.sha256(data).hexdigest(),
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "max_id": int(max_id),
        "dtype": "uint16" if max_id <= 65535 else "uint32",
        "eos_id": eos_id, "eos_token": eos,
        "bos_id": bos_id, "bos_token": bos,
    }
    return info, data


def load_run_tokenizer(store: Store, info: dict[str, Any], *, encode_special_tokens: bool) -> Tokenizer:
    """The run's tokenizer (``OUTPUT/tokenizer.json``), checked against the plan's sha256."""
    key = f"{store.uri}|{info['sha256']}|{encode_special_tokens}"
    tok = _CACHE.get(key)
    if tok is None:
        try:
            with store.open(info["path"]) as f:
                data = f.read()
        except FileNotFoundError:
            raise ConfigError(f"{store.url(info['path'])}: the run's tokenizer is missing") from None
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ConfigError(f"{store.url(info['path'])}: tokenizer changed since planning (sha256 differs)")
        tok = Tokenizer.from_str(data.decode("utf-8"))
        # With this set, a document that spells "<|endoftext|>" gets plain-text ids, not the
        # special id: document text must never forge document boundaries.
        tok.encode_special_tokens = encode_special_tokens
        _CACHE[key] = tok
    return tok
