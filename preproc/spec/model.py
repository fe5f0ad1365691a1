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
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, field_validator,
                      model_validator)

from preproc.errors import ConfigError
from preproc.spec.near import NearOptions, near_json, resolve_near
from preproc.spec.secrets import check_spec

__all__ = ["Spec", "S3Spec", "StorageSpec", "load_spec", "parse_size"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(value: int | str) -> int:
    """``"256MiB"`` → 268435456; plain integers pass through. Decimal (MB) and binary (MiB) units."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 268435456 or '256MiB'")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a size such as 268435456 or '256MiB', got {value!r}")
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _UNITS[unit])


def _positive_size(v: Any) -> int:
    n = parse_size(v)
    if n < 1:
        raise ValueError("must be a positive size")
    return n


# A byte count written as 268435456 or "256MiB" (YAML users write units).
Size = Annotated[int, BeforeValidator(_positive_size)]


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
    near: Annotated[Optional[NearOptions], BeforeValidator(resolve_near), PlainSerializer(near_json)] = None

    @field_validator("exact", mode="before")
    @classmethod
    def _exact_bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v


class TokenizeSpec(_Model):
    # Path or URI of a HF ``tokenizer.json``. Required to run; ``preproc demo`` trains one.
    tokenizer: str | None = None
    # ``true``: append the tokenizer's end-of-text token; a string names the token.
    eos: Union[bool, str] = True
    bos: Union[bool, str] = False
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


# Keys that would put a secret into the spec (which is copied into plan.json, dataset.json
# and Kubernetes ConfigMaps). Checked by name, so the message never repeats the value.
_SECRET_KEYS = {"key", "secret", "token", "password", "credentials", "aws_access_key_id",
                "aws_secret_access_key", "aws_session_token", "access_key", "secret_key",
                "access_key_id", "secret_access_key", "session_token"}


class S3Spec(_Model):
    """How to reach S3 or an S3-compatible store (MinIO, Ceph, R2) for every ``s3://`` path.

    Credentials are never part of a spec: they come from the standard AWS chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
    ``~/.aws/credentials`` and ``config``, web identity / IRSA, ECS/EKS pod identity, EC2
    instance metadata). ``AWS_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION`` apply when the
    fields below are unset.
    """

    endpoint_url: str | None = None          # http(s)://host:port of an S3-compatible store
    region: str | None = None
    profile: str | None = None               # a profile of ~/.aws/config (no keys here)
    anonymous: bool = False                  # unsigned requests: public buckets
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    verify_tls: Union[bool, str] = True      # or the path of a CA bundle
    requester_pays: bool = False
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None        # a key id/ARN, not a secret
    # Each request is retried with exponential backoff and jitter on throttling (SlowDown,
    # 503), 5xx and connection errors, up to this many attempts.
    max_attempts: int = Field(default=8, ge=1, le=50)
    retry_mode: Literal["standard", "adaptive"] = "standard"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for k in v:
                if str(k).lower() in _SECRET_KEYS:
                    raise ConfigError(
                        f"storage.s3.{k}: credentials are never read from the spec (it is copied into "
                        f"plan.json); use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                        f"~/.aws/credentials or an instance/workload identity")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("expected http(s)://host[:port]")
        if u.username or u.password:
            # Checked before anything echoes the value: userinfo would be a secret.
            raise ConfigError("storage.s3.endpoint_url: must not hold a user name or password; "
                              "credentials come from the AWS environment or config files")
        return v.rstrip("/")


class StorageSpec(_Model):
    """Storage settings for every path of a run (inputs, tokenizer, output)."""

    s3: S3Spec = S3Spec()


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


class Spec(_Model):
    """A whole pipeline run. Build with :func:`load_spec`."""

    input: InputSpec
    output: str | None = None
    shards: int | None = Field(default=None, ge=1)
    target_shard_bytes: Size = 128 * 2**20
    # ``false`` passes text through unchanged; otherwise each key names a clean step
    # (``normalize``, ``length``, and the quality filters), ``false`` switches it off.
    clean: Union[bool, dict[str, Any]] = True
    dedup: DedupSpec = DedupSpec()
    tokenize: TokenizeSpec = TokenizeSpec()
    executor: ExecutorSpec = ExecutorSpec()
    storage: StorageSpec = StorageSpec()
    metrics: MetricsSpec = MetricsSpec()

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, v: Any) -> Any:
        check_spec(v)   # before anything can echo a value (preproc.spec.secrets)
        return v

    @model_validator(mode="after")
    def _check_clean(self) -> "Spec":
        from preproc.clean.steps import build_steps  # the registry validates each step's options

        build_steps(self.clean)
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


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


def _format_error(err: ValidationError, where: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "union[", "literal[")))
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(e["loc"][:-1])
        msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif "input" in e and e["type"] not in ("missing",):
        got = repr(e["input"])
        msg = f"{msg} (got {got[:80]})"
    more = f" (+{len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{where}: {loc or '<top>'}: {msg}{more}"


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Spec
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return []
    return list(model.model_fields)


def load_spec(spec: "Spec | str | Path | dict[str, Any]", **overrides: Any) -> Spec:
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
                from preproc.io.store import read_text  # specs may live on S3 or a ConfigMap mount

                text = read_text(text)
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
        raise ConfigError(_format_error(e, where)) from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
