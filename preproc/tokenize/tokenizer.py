"""Loading the HF tokenizer, resolving BOS/EOS, and pinning it to the run.

The coordinator reads the tokenizer once (path or any fsspec URI), records its sha256,
vocabulary size and special ids in the plan, and copies it to ``OUTPUT/tokenizer.json``.
Workers load that copy, so a pod never needs the user's original path, and a tokenizer
that changed after planning is an error, not a silent mix of two vocabularies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from preproc.errors import ConfigError
from preproc.faults import failpoint
from preproc.io.readers import ReadLog, read_split
from preproc.io.s3 import StorageLike, read_bytes
from preproc.io.store import Store
from preproc.spec.model import TokenizeSpec
from preproc.tokenize import tiktoken_backend  # imports tiktoken itself only when used (optional)

if TYPE_CHECKING:
    from preproc.spec.model import InputSpec, Spec

__all__ = ["inspect_tokenizer", "load_run_tokenizer", "choose_backend", "Encoder", "preload"]

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


def _parse(data: bytes) -> Tokenizer:
    """The tokenizer in ``data``, parsed once per process for planning (inspect, then the
    backend proof)."""
    return _cached("plan|" + hashlib.sha256(data).hexdigest(), lambda: Tokenizer.from_str(data.decode("utf-8")))


def inspect_tokenizer(cfg: TokenizeSpec, storage_options: StorageLike = None) -> tuple[dict[str, Any], bytes]:
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
        tok = _parse(data)
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


def _cached(key: str, make):
    """This process's tokenizer cache: ``make()`` once per key. Keys carry the content's
    sha256, so a tokenizer loaded from any path or copy with that content is the same one."""
    got = _CACHE.get(key)
    if got is None:
        got = _CACHE[key] = make()
    return got


def _hf_tokenizer(data: bytes, encode_special_tokens: bool) -> Tokenizer:
    tok = Tokenizer.from_str(data.decode("utf-8"))
    # With this set, a document that spells "<|endoftext|>" gets plain-text ids, not the
    # special id: document text must never forge document boundaries.
    tok.encode_special_tokens = encode_special_tokens
    return tok


def load_run_tokenizer(store: Store, info: dict[str, Any], *, encode_special_tokens: bool) -> Tokenizer:
    """The run's tokenizer (``OUTPUT/tokenizer.json``), checked against the plan's sha256."""

    def load() -> Tokenizer:
        try:
            with store.open(info["path"]) as f:
                data = f.read()
        except FileNotFoundError:
            raise ConfigError(f"{store.url(info['path'])}: the run's tokenizer is missing") from None
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ConfigError(f"{store.url(info['path'])}: tokenizer changed since planning (sha256 differs)")
        return _hf_tokenizer(data, encode_special_tokens)

    return _cached(f"hf|{info['sha256']}|{encode_special_tokens}", load)


def preload(uri: str, storage: Any = None, *, encode_special_tokens: bool) -> None:
    """Parse the tokenizer at ``uri`` (and its tiktoken twin, where one can be built) into
    this process's cache: a worker started while the coordinator plans has it ready for its
    first task. Best effort: any failure is left to the real load."""
    failpoint("preload")      # chaos tests: a store that answers slowly or not at all
    try:
        data = read_bytes(uri, storage)
        sha = hashlib.sha256(data).hexdigest()
        _cached(f"hf|{sha}|{encode_special_tokens}", lambda: _hf_tokenizer(data, encode_special_tokens))
    except Exception:  # noqa: BLE001 - the run reports a bad tokenizer, with context
        return
    enc, _ = tiktoken_backend.build(data.decode("utf-8"))
    if enc is not None:
        _CACHE[f"tk|{sha}"] = enc


SAMPLE_BYTES = 256 * 1024


def _sample_texts(shards: Sequence[Any], input_spec: InputSpec, storage_options=None) -> list[str]:
    """Up to SAMPLE_BYTES of documents from the first input splits (bounded planning cost)."""
    texts: list[str] = []
    size = 0
    for shard in shards[:2]:
        for split in shard.splits[:2]:
            try:
                for batch in read_split(split, input_spec, ReadLog(), storage_options, batch_bytes=SAMPLE_BYTES):
                    for t in batch.column("text").to_pylist():
                        texts.append(t[:20000])
                        size += len(texts[-1])
                        if size >= SAMPLE_BYTES:
                            return texts
            except Exception:  # noqa: BLE001 - the readers report bad files later, in the run
                continue
    return texts


def choose_backend(spec: Spec, shards: Sequence[Any], tok_bytes: bytes) -> dict[str, str]:
    """The tokenize backend for a plan of ``spec`` over ``shards``, and why: the plan's
    ``tokenizer`` entry gets ``backend`` and ``backend_reason`` from it. tiktoken is chosen
    only when it gives the same ids as the HF tokenizer on probes and an input sample."""
    cfg = spec.tokenize
    if cfg.backend == "hf":
        return {"backend": "hf", "backend_reason": "forced by tokenize.backend"}
    enc, why = tiktoken_backend.build(tok_bytes.decode("utf-8"))
    if enc is not None:
        hf = _parse(tok_bytes)
        why = tiktoken_backend.equivalent(enc, hf, _sample_texts(shards, spec.input, spec.storage),
                                          encode_special_tokens=cfg.encode_special_tokens)
    if why is None:
        return {"backend": "tiktoken", "backend_reason": "identical ids on probes and an input sample"}
    if cfg.backend == "tiktoken":
        raise ConfigError(f"tokenize.backend: tiktoken cannot reproduce this tokenizer exactly: {why}")
    return {"backend": "hf", "backend_reason": f"tiktoken not equivalent: {why}"}


class Encoder:
    """The run's tokenizer behind one call: ids of many texts (HF or tiktoken backend)."""

    def __init__(self, store: Store, info: dict[str, Any], *, encode_special_tokens: bool):
        self.hf = load_run_tokenizer(store, info, encode_special_tokens=encode_special_tokens)
        self.special = encode_special_tokens
        self.tk = None
        if info.get("backend") == "tiktoken":
            def build():
                enc, why = tiktoken_backend.build(self.hf.to_str())
                if enc is None:
                    raise ConfigError(f"tokenize: the plan chose tiktoken but it cannot be built here: {why}")
                return enc

            self.tk = _cached(f"tk|{info['sha256']}", build)

    def ids(self, texts: list[str]) -> list[list[int]]:
        if self.tk is not None:
            return tiktoken_backend.encode_batch(self.tk, texts, encode_special_tokens=self.special)
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]
