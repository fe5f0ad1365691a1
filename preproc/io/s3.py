"""S3 and every other remote filesystem: the storage settings, the filesystem cache, credentials.

The storage settings (:class:`StorageSpec`, :class:`S3Spec`) are the storage room's value
objects: the spec holds them under ``storage:``, and every reader and writer of the run gets
them from there (or, in a worker, from ``$PREPROC_S3``). Credentials are never part of them:
they come from the standard AWS chain (environment, config files, web/workload identity,
instance metadata). Two things here are about S3 in production rather than about files:

* **retries** — every request is retried by botocore with exponential backoff and jitter on
  throttling (``SlowDown``, 503), 5xx and connection errors (``storage.s3.max_attempts``).
* **no stale credentials** — fsspec caches filesystem instances forever, and an instance
  keeps the credentials it started with. We never use fsspec's instance cache for remote
  filesystems; ours is keyed on a fingerprint of the credential sources (AWS environment
  variables, the mtime of the credentials/config files), entries expire after
  :data:`FS_MAX_AGE_S`, and a credential error (expired token, rotated key) drops them all
  (:func:`forget_filesystems`, called by :class:`~preproc.io.store.Store`).
  Listing caches are off: markers written by other processes must be seen at once.

Workers rebuild the S3 settings from ``plan.json``; to read ``plan.json`` itself a worker
uses ``$PREPROC_S3`` (see :func:`worker_env`) or the standard ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

import fsspec
from fsspec.core import split_protocol, url_to_fs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from preproc.errors import ConfigError, format_error

__all__ = ["S3Spec", "StorageSpec", "StorageLike", "as_storage", "default_storage", "worker_env", "exported",
           "s3_options", "filesystem", "forget_filesystems", "open_fs", "read_bytes", "read_text", "join",
           "is_remote", "is_s3", "error_code", "is_credential_error", "ENV_VAR", "FS_MAX_AGE_S",
           "S3_BLOCK_BYTES", "S3_PROTOCOLS"]

# The environment variable that carries a run's (secret-free) S3 settings to worker processes.
ENV_VAR = "PREPROC_S3"
# A cached remote filesystem is rebuilt after this long, so that a long-running process
# (a CronJob coordinator, a training job's loader) picks up rotated credentials.
FS_MAX_AGE_S = 600.0
# s3fs reads ahead one block past each read: 8 MiB keeps a byte-range split's overshoot
# small (the default, 50 MiB, would read far past the end of a 128 MiB split), and it is
# also the multipart part size (10,000 parts → files up to 80 GB).
S3_BLOCK_BYTES = 8 * 2**20

S3_PROTOCOLS = ("s3", "s3a")
# Where credentials and S3 settings come from besides the spec; a change in any of them
# means a new filesystem instance (values are hashed, never kept or logged).
_CRED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
             "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL",
             "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CA_BUNDLE",
             "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY")
# Error codes after which cached credentials must be dropped (expired, rotated, revoked).
_CREDENTIAL_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidToken",
                     "TokenRefreshRequired", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId"}

# Keys that would put a secret into the spec (which is copied into plan.json, dataset.json
# and Kubernetes ConfigMaps). Checked by name, so the message never repeats the value.
_SECRET_KEYS = {"key", "secret", "token", "password", "credentials", "aws_access_key_id",
                "aws_secret_access_key", "aws_session_token", "access_key", "secret_key",
                "access_key_id", "secret_access_key", "session_token"}


# ---------------------------------------------------------------------------------------
# Settings

class S3Spec(BaseModel):
    """How to reach S3 or an S3-compatible store (MinIO, Ceph, R2) for every ``s3://`` path.

    Credentials are never part of a spec: they come from the standard AWS chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
    ``~/.aws/credentials`` and ``config``, web identity / IRSA, ECS/EKS pod identity, EC2
    instance metadata). ``AWS_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION`` apply when the
    fields below are unset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = None          # http(s)://host:port of an S3-compatible store
    region: str | None = None
    profile: str | None = None               # a profile of ~/.aws/config (no keys here)
    anonymous: bool = False                  # unsigned requests: public buckets
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    verify_tls: bool | str = True      # or the path of a CA bundle
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
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("expected http(s)://host[:port]")
        if u.username or u.password:
            # Checked before anything echoes the value: userinfo would be a secret.
            raise ConfigError("storage.s3.endpoint_url: must not hold a user name or password; "
                              "credentials come from the AWS environment or config files")
        return v.rstrip("/")


class StorageSpec(BaseModel):
    """Storage settings for every path of a run (inputs, tokenizer, output)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    s3: S3Spec = S3Spec()


StorageLike = StorageSpec | dict | None


def as_storage(storage: StorageLike) -> StorageSpec:
    """A :class:`StorageSpec` from the spec's object, its dict form, or the process default."""
    if storage is None:
        return default_storage()
    if isinstance(storage, StorageSpec):
        return storage
    if isinstance(storage, dict):
        try:
            return StorageSpec.model_validate(storage)
        except ValidationError as e:
            raise ConfigError(format_error(e, "storage", StorageSpec)) from None
    raise TypeError(f"storage: expected a StorageSpec or a dict like {{'s3': {{...}}}}, got {type(storage).__name__}")


def default_storage() -> StorageSpec:
    """The settings used when none are given: ``$PREPROC_S3`` (a worker's), else defaults
    (which still honour ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` and the rest of the AWS chain)."""
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return StorageSpec()
    try:
        return StorageSpec(s3=S3Spec.model_validate_json(raw))
    except ValidationError as e:
        raise ConfigError(format_error(e, f"${ENV_VAR}", StorageSpec)) from None


def worker_env(storage: StorageLike) -> dict[str, str]:
    """The environment a worker process needs to reach the run's output (to read
    ``plan.json``): the spec's S3 settings, which hold no secret. Executors add it to the
    environment of the processes, pods or Ray tasks they start."""
    s3 = as_storage(storage).s3
    return {ENV_VAR: s3.model_dump_json(exclude_defaults=True)}


@contextmanager
def exported(storage: StorageLike) -> Iterator[None]:
    """Within the block, processes started by this one see ``storage`` as their default."""
    env = worker_env(storage)
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_options(s3: S3Spec | None = None) -> dict[str, Any]:
    """``s3fs.S3FileSystem`` keyword arguments for ``s3`` (also usable as ``storage_options``
    of ``datasets`` or ``pandas``). Never contains credentials."""
    s3 = s3 or S3Spec()
    config: dict[str, Any] = {"retries": {"max_attempts": s3.max_attempts, "mode": s3.retry_mode},
                              "connect_timeout": s3.connect_timeout_s, "read_timeout": s3.read_timeout_s}
    if s3.addressing_style != "auto":
        config["s3"] = {"addressing_style": s3.addressing_style}
    opts: dict[str, Any] = {"use_listings_cache": False, "config_kwargs": config,
                            "default_block_size": S3_BLOCK_BYTES}
    client: dict[str, Any] = {}
    if s3.endpoint_url:
        opts["endpoint_url"] = s3.endpoint_url
    if s3.region:
        client["region_name"] = s3.region
    if s3.verify_tls is not True:
        client["verify"] = s3.verify_tls
    if client:
        opts["client_kwargs"] = client
    if s3.profile:
        opts["profile"] = s3.profile
    if s3.anonymous:
        opts["anon"] = True
    if s3.requester_pays:
        opts["requester_pays"] = True
    if s3.server_side_encryption:
        extra = {"ServerSideEncryption": s3.server_side_encryption}
        if s3.sse_kms_key_id:
            extra["SSEKMSKeyId"] = s3.sse_kms_key_id
        opts["s3_additional_kwargs"] = extra
    return opts


# ---------------------------------------------------------------------------------------
# Filesystems

_FS_CACHE: dict[tuple[str, str, int], tuple[float, fsspec.AbstractFileSystem]] = {}
_FS_LOCK = threading.Lock()


def _credential_fingerprint() -> int:
    # Cheap (it runs on every Store operation): the values are hashed in place, never kept.
    home = os.path.expanduser("~")
    files = []
    for f in (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"),
              os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")):
        try:
            st = os.stat(f)
            files.append((f, st.st_mtime_ns, st.st_size))
        except OSError:
            files.append((f, None, None))
    return hash((tuple(os.environ.get(k) for k in _CRED_ENV), tuple(files)))


def forget_filesystems() -> None:
    """Drop every cached remote filesystem (ours and fsspec's): the next use builds a new
    one with fresh credentials."""
    with _FS_LOCK:
        _FS_CACHE.clear()
    for proto in S3_PROTOCOLS:
        try:
            fsspec.get_filesystem_class(proto).clear_instance_cache()
        except (ImportError, ValueError):
            pass


def filesystem(protocol: str, opts: dict[str, Any]) -> fsspec.AbstractFileSystem:
    key = (protocol, json.dumps(opts, sort_keys=True, default=str), _credential_fingerprint())
    now = time.monotonic()
    with _FS_LOCK:
        hit = _FS_CACHE.get(key)
        if hit is not None and now - hit[0] < FS_MAX_AGE_S:
            return hit[1]
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        extra = " (pip install 'preproc[s3]')" if protocol in S3_PROTOCOLS else ""
        raise ConfigError(f"storage: {protocol}:// needs a filesystem package that is not installed{extra}: {e}") from None
    if protocol in S3_PROTOCOLS:
        _quiet_credential_logs()
    fs = cls(skip_instance_cache=True, **opts)
    with _FS_LOCK:
        # Drop entries of earlier credentials or settings of this protocol: they will not be
        # asked for again, and holding them would keep their connections open.
        for k in [k for k in _FS_CACHE if k[0] == protocol and (k[2] != key[2] or now - _FS_CACHE[k][0] >= FS_MAX_AGE_S)]:
            del _FS_CACHE[k]
        _FS_CACHE[key] = (now, fs)
    return fs


def _quiet_credential_logs() -> None:
    # botocore says "Found credentials in environment variables." at INFO on every new
    # client: noise on a CLI's stderr, where a problem must be one line. A level the host
    # program set explicitly is left alone.
    # Likewise "Found endpoint for s3 via: environment_global." with AWS_ENDPOINT_URL.
    for name in ("botocore.credentials", "aiobotocore.credentials", "botocore.configprovider"):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)


def is_s3(uri: str) -> bool:
    return split_protocol(uri)[0] in S3_PROTOCOLS


def is_remote(uri: str) -> bool:
    proto, _ = split_protocol(uri)
    return proto not in (None, "file", "local")


def open_fs(uri: str, storage: StorageLike = None):
    """``(filesystem, path)`` for a URI. Local paths become absolute.

    ``storage``: the spec's :class:`StorageSpec` (or its dict form,
    ``{"s3": {"endpoint_url": ...}}``); ``None`` uses :func:`default_storage`.
    """
    if "://" not in uri and not uri.startswith("/"):
        uri = os.path.abspath(uri)
    if "::" in uri:  # chained URLs (simplecache::s3://...) are fsspec's business
        return url_to_fs(uri)
    proto, _ = split_protocol(uri)
    if proto in (None, "file", "local"):
        return url_to_fs(uri)
    opts = s3_options(as_storage(storage).s3) if proto in S3_PROTOCOLS else {}
    fs = filesystem(proto, opts)
    return fs, fs._strip_protocol(uri)


def read_bytes(uri: str, storage: StorageLike = None) -> bytes:
    fs, path = open_fs(uri, storage)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str, storage: StorageLike = None) -> str:
    return read_bytes(uri, storage).decode("utf-8")


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if parts else base


# ---------------------------------------------------------------------------------------
# Errors

def error_code(e: BaseException) -> str | None:
    """The S3 error code behind an exception (s3fs wraps botocore's ClientError)."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        resp = getattr(cur, "response", None)
        if isinstance(resp, dict):
            code = (resp.get("Error") or {}).get("Code")
            if code:
                return str(code)
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def is_credential_error(e: BaseException) -> bool:
    return error_code(e) in _CREDENTIAL_CODES
