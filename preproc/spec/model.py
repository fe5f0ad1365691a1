"""The pipeline spec: YAML in, validated frozen objects out, one-line errors that name the key.

A spec is what a user writes in ``jobs/*.yaml``::

    input:
      paths: ["s3://corpus/web/*.jsonl.gz"]
      text_field: text
    output: s3://datasets/web-v1
    shards: 64
    clean:
      normalize: {form: NFC}
      length: {min_words: 5}
    dedup:
      exact: true
    tokenize:
      tokenizer: /models/gpt2/tokenizer.json
      formats: [parquet, megatron]
    executor:
      kind: local
      workers: 8

Everything is validated before any work starts; a wrong key or value is a
:class:`~preproc.errors.ConfigError` whose message names the key and what is allowed.
This module holds the models; :mod:`preproc.spec.load` reads YAML and applies overrides.
The storage settings (``storage:``) are the storage room's own objects
(:mod:`preproc.io.s3`), held here as a section.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator, model_serializer, model_validator

from preproc.clean.steps import build_steps
from preproc.io.s3 import S3Spec, StorageSpec
from preproc.spec.near import NearOptions, near_json, resolve_near
from preproc.spec.secrets import check_spec
from preproc.spec.sizes import Size

__all__ = ["Spec", "InputSpec", "DedupSpec", "ExactDedupSpec", "TokenizeSpec", "ExecutorSpec", "MetricsSpec",
           "StorageSpec", "S3Spec"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Model):
    """Where the raw corpus is and how to read it."""

    paths: list[str] = Field(min_length=1)
    format: Literal["auto", "jsonl", "parquet", "text", "arrow"] = "auto"
    text_field: str = "text"
    # A record's id comes from this field when present; otherwise it is generated from the
    # file path and the record's byte offset (JSONL) or row number (Parquet, Arrow): stable
    # across runs and unique. ``null`` always generates.
    id_field: str | None = "id"
    source_field: str | None = "source"
    # Extra input fields carried through to the clean output (e.g. ``url``, ``date``).
    keep_fields: list[str] = []
    # A record larger than this (UTF-8 bytes of its text; a JSONL line longer than this is
    # rejected while it is scanned) is rejected ``doc_too_large``. It bounds reader memory.
    max_doc_bytes: Size | None = 64 * 2**20
    # Invalid UTF-8 in JSONL: ``reject`` the record, or ``replace`` bad bytes with U+FFFD.
    invalid_utf8: Literal["reject", "replace"] = "reject"


class ExactDedupSpec(_Model):
    enabled: bool = True
    # How many indices the exact-dedup stage fans out over (hash-partitioned buckets).
    # Default: the number of shards. Any value gives the same result.
    buckets: int | None = Field(default=None, ge=1)


class DedupSpec(_Model):
    exact: ExactDedupSpec = ExactDedupSpec()
    # Near duplicates (MinHash LSH): ``true`` or a mapping as written, resolved once into
    # frozen options (preproc.spec.near); ``None`` = off, written back as ``false``.
    near: Annotated[NearOptions | None, BeforeValidator(resolve_near), PlainSerializer(near_json)] = None

    @field_validator("exact", mode="before")
    @classmethod
    def _exact_bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v


class TokenizeSpec(_Model):
    # Path or URI of a HF ``tokenizer.json``. Required to run; ``preproc demo`` trains one.
    tokenizer: str | None = None
    # ``true``: append the tokenizer's end-of-text token; a string names the token.
    eos: bool | str = True
    bos: bool | str = False
    formats: list[Literal["parquet", "megatron"]] = ["parquet", "megatron"]
    # Documents per ``encode_batch`` call: large batches keep the Rust thread pool busy.
    batch_size: int = Field(default=2048, ge=1)
    # ... and at most about this much text per call (a huge document goes alone): bounds
    # the worker's memory by the batch, not the shard.
    batch_bytes: Size = 8 * 2**20
    # true: text that spells a special token ("<|endoftext|>") gets plain-text ids, so a
    # document can never forge a document boundary. false: HF's default matching.
    encode_special_tokens: bool = True
    # auto: tiktoken where it is proven to give identical ids (checked when planning), else
    # HF tokenizers; or force one. tiktoken is ~2.5x faster on GPT-2-style BPE.
    backend: Literal["auto", "hf", "tiktoken"] = "auto"

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one of parquet, megatron")
        return sorted(set(v), key=["parquet", "megatron"].index)


class ExecutorSpec(_Model):
    kind: Literal["local", "k8s", "ray"] = "local"
    # Local processes (default: the machine's cores).
    workers: int | None = Field(default=None, ge=1)
    # Threads of each local worker's pools (Rust tokenizer, tiktoken, Arrow); default: cores
    # divided among the workers, at least 1. Set 1 to make one worker one core, as a
    # Kubernetes worker with ``cpu: 1`` is.
    threads_per_worker: int | None = Field(default=None, ge=1)
    # Retries of one index before the stage fails (all executors).
    retries: int = Field(default=2, ge=0)
    # Executor-specific options (k8s: namespace, image, ...; ray: address, num_cpus, ...),
    # validated by that executor.
    options: dict[str, Any] = {}


class MetricsSpec(_Model):
    """Prometheus metrics of workers and the coordinator (names in :mod:`preproc.observe.metrics`).

    Not part of the run id: changing where metrics go never re-plans a run. The environment
    wins over the spec: ``PREPROC_PUSHGATEWAY``, ``PREPROC_METRICS_DIR``, ``PREPROC_METRICS=off``.
    """

    enabled: bool = True
    # http://pushgateway:9091: each index pushes its group (short-lived pods) when set.
    pushgateway: str | None = None
    # Folder for ``*.prom`` textfiles (node_exporter's textfile collector) when no
    # Pushgateway is set; default ``<output>/_metrics``.
    textfile_dir: str | None = None
    # A file holding ``user:password`` for the Pushgateway's basic auth (a mounted Secret);
    # never put them in the URL. ``PREPROC_PUSHGATEWAY_AUTH_FILE`` wins.
    pushgateway_auth_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v


# Spec fields that came after specs were in use: left out of the JSON while unset.
ADDED_LATER = ("later_fan_out", "clean_fan_out")


class Spec(_Model):
    """A whole pipeline run. Build with :func:`load_spec`."""

    input: InputSpec
    output: str | None = None
    shards: int | None = Field(default=None, ge=1)
    target_shard_bytes: Size = 128 * 2**20
    # Indices of the stages after clean that work through the shards (tokenize's slices,
    # near dedup's shard groups). Default: one per 32 MiB of input, at least 16; never more
    # than the shards. Any value gives the same documents and token ids.
    later_fan_out: int | None = Field(default=None, ge=1)
    # Indices of clean. Default: one per shard; shards under 1 MiB on average are taken in
    # groups, one index per MiB of input, at least 16. Never more than the shards. Any value
    # gives the same documents and token ids.
    clean_fan_out: int | None = Field(default=None, ge=1)
    # ``false`` passes text through unchanged; otherwise each key names a clean step
    # (``normalize``, ``length``, and the quality filters), ``false`` switches it off.
    clean: bool | dict[str, Any] = True
    dedup: DedupSpec = DedupSpec()
    tokenize: TokenizeSpec = TokenizeSpec()
    executor: ExecutorSpec = ExecutorSpec()
    storage: StorageSpec = StorageSpec()
    metrics: MetricsSpec = MetricsSpec()

    @model_serializer(mode="wrap")
    def _unset_later_fields_left_out(self, handler: Any) -> dict[str, Any]:
        # Fields added after specs were in use are not written while unset: plans, manifests
        # and run ids of the specs from before them stay byte-identical.
        d = handler(self)
        for k in ADDED_LATER:
            if d.get(k) is None:
                d.pop(k, None)
        return d

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, v: Any) -> Any:
        check_spec(v)   # before anything can echo a value (preproc.spec.secrets)
        return v

    @model_validator(mode="after")
    def _check_clean(self) -> Spec:
        build_steps(self.clean)   # the registry validates each step's options
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
