"""Storage: one code path for local paths, PVC mounts and ``s3://`` (anything fsspec opens).

:class:`Store` wraps a run's output URI and owns the two guarantees every stage relies on:

* **atomic commit** — an output file appears whole or not at all. Locally it is written to a
  hidden temporary name in the same folder and renamed (``os.replace`` is atomic on POSIX);
  on object stores a PUT (also a multipart upload) only becomes visible when complete, and
  an exception inside the write aborts the upload instead of publishing a partial object.
* **markers last** — an index is done when ``<stage>/_done/<index:05d>.json`` exists, and that
  marker is written after every output of the index has been committed. Readers and reruns
  trust markers only; a stray temporary file from a killed worker is harmless.

S3 settings come from the spec's ``storage.s3`` (:class:`~preproc.spec.model.S3Spec`: endpoint,
region, profile, retries), credentials only from the standard AWS chain (environment, config
files, web/workload identity, instance metadata). Three things here are about S3 in
production rather than about files:

* **retries** — every request is retried by botocore with exponential backoff and jitter on
  throttling (``SlowDown``, 503), 5xx and connection errors (``storage.s3.max_attempts``).
* **no stale credentials** — fsspec caches filesystem instances forever, and an instance
  keeps the credentials it started with. We never use fsspec's instance cache for remote
  filesystems; ours is keyed on a fingerprint of the credential sources (AWS environment
  variables, the mtime of the credentials/config files), entries expire after
  :data:`FS_MAX_AGE_S`, and a credential error (expired token, rotated key) drops them all.
  Listing caches are off: markers written by other processes must be seen at once.
* **preflight** — :func:`preflight` checks every ``s3://`` location of a spec (credentials
  found, bucket exists, access allowed) before any work, and says what is wrong in one line.

Workers rebuild the S3 settings from ``plan.json``; to read ``plan.json`` itself a worker
uses ``$PREPROC_S3`` (see :func:`worker_env`) or the standard ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import posixpath
import threading
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Union

import fsspec
from fsspec.core import split_protocol, url_to_fs

from preproc.io import integrity
from preproc.faults import context as fault_context, failpoint
from preproc.errors import ConfigError, PreprocError

if TYPE_CHECKING:
    from preproc.spec.model import S3Spec, Spec, StorageSpec

__all__ = ["Store", "open_fs", "read_text", "read_bytes", "join", "s3_options", "preflight", "worker_env",
           "default_storage", "exported", "forget_filesystems", "is_remote", "ENV_VAR", "FS_MAX_AGE_S"]

log = logging.getLogger("preproc")

# The environment variable that carries a run's (secret-free) S3 settings to worker processes.
ENV_VAR = "PREPROC_S3"
# A cached remote filesystem is rebuilt after this long, so that a long-running process
# (a CronJob coordinator, a training job's loader) picks up rotated credentials.
FS_MAX_AGE_S = 600.0
# s3fs reads ahead one block past each read: 8 MiB keeps a byte-range split's overshoot
# small (the default, 50 MiB, would read far past the end of a 128 MiB split), and it is
# also the multipart part size (10,000 parts → files up to 80 GB).
S3_BLOCK_BYTES = 8 * 2**20

StorageLike = Union["StorageSpec", dict, None]

_S3_PROTOCOLS = ("s3", "s3a")
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


# ---------------------------------------------------------------------------------------
# Settings

def _as_storage(storage: StorageLike) -> "StorageSpec":
    """A :class:`StorageSpec` from the spec's object, its dict form, or the process default."""
    from preproc.spec.model import StorageSpec

    if storage is None:
        return default_storage()
    if isinstance(storage, StorageSpec):
        return storage
    if isinstance(storage, dict):
        from pydantic import ValidationError

        try:
            return StorageSpec.model_validate(storage)
        except ValidationError as e:
            from preproc.spec.model import _format_error

            raise ConfigError(_format_error(e, "storage")) from None
    raise TypeError(f"storage: expected a StorageSpec or a dict like {{'s3': {{...}}}}, got {type(storage).__name__}")


def default_storage() -> "StorageSpec":
    """The settings used when none are given: ``$PREPROC_S3`` (a worker's), else defaults
    (which still honour ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` and the rest of the AWS chain)."""
    from preproc.spec.model import S3Spec, StorageSpec

    raw = os.environ.get(ENV_VAR)
    if not raw:
        return StorageSpec()
    from pydantic import ValidationError

    from preproc.spec.model import _format_error

    try:
        return StorageSpec(s3=S3Spec.model_validate_json(raw))
    except ValidationError as e:
        raise ConfigError(_format_error(e, f"${ENV_VAR}")) from None


def worker_env(storage: StorageLike) -> dict[str, str]:
    """The environment a worker process needs to reach the run's output (to read
    ``plan.json``): the spec's S3 settings, which hold no secret. Executors add it to the
    environment of the processes, pods or Ray tasks they start."""
    s3 = _as_storage(storage).s3
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


def s3_options(s3: "S3Spec | None" = None) -> dict[str, Any]:
    """``s3fs.S3FileSystem`` keyword arguments for ``s3`` (also usable as ``storage_options``
    of ``datasets`` or ``pandas``). Never contains credentials."""
    from preproc.spec.model import S3Spec

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
    for proto in _S3_PROTOCOLS:
        try:
            fsspec.get_filesystem_class(proto).clear_instance_cache()
        except (ImportError, ValueError):
            pass


def _filesystem(protocol: str, opts: dict[str, Any]) -> fsspec.AbstractFileSystem:
    key = (protocol, json.dumps(opts, sort_keys=True, default=str), _credential_fingerprint())
    now = time.monotonic()
    with _FS_LOCK:
        hit = _FS_CACHE.get(key)
        if hit is not None and now - hit[0] < FS_MAX_AGE_S:
            return hit[1]
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        extra = " (pip install 'preproc[s3]')" if protocol in _S3_PROTOCOLS else ""
        raise ConfigError(f"storage: {protocol}:// needs a filesystem package that is not installed{extra}: {e}") from None
    if protocol in _S3_PROTOCOLS:
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


def is_remote(uri: str) -> bool:
    proto, _ = split_protocol(uri)
    return proto not in (None, "file", "local")


def open_fs(uri: str, storage: StorageLike = None):
    """``(filesystem, path)`` for a URI. Local paths become absolute.

    ``storage``: the spec's :class:`~preproc.spec.model.StorageSpec` (or its dict form,
    ``{"s3": {"endpoint_url": ...}}``); ``None`` uses :func:`default_storage`.
    """
    if "://" not in uri and not uri.startswith("/"):
        uri = os.path.abspath(uri)
    if "::" in uri:  # chained URLs (simplecache::s3://...) are fsspec's business
        return url_to_fs(uri)
    proto, _ = split_protocol(uri)
    if proto in (None, "file", "local"):
        return url_to_fs(uri)
    opts = s3_options(_as_storage(storage).s3) if proto in _S3_PROTOCOLS else {}
    fs = _filesystem(proto, opts)
    return fs, fs._strip_protocol(uri)


def read_bytes(uri: str, storage: StorageLike = None) -> bytes:
    fs, path = open_fs(uri, storage)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str, storage: StorageLike = None) -> str:
    return read_bytes(uri, storage).decode("utf-8")


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if parts else base


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


# ---------------------------------------------------------------------------------------
# Errors

def _error_code(e: BaseException) -> str | None:
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


def _is_credential_error(e: BaseException) -> bool:
    return _error_code(e) in _CREDENTIAL_CODES


def _refreshing(method):
    """Retry a :class:`Store` operation once with new filesystems after a credential error
    (an expired session token, a rotated key): cached credentials are the likely cause."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            if self.local or not _is_credential_error(e):
                raise
            forget_filesystems()
            return method(self, *args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------
# Preflight

def preflight(spec: "Spec") -> None:
    """Check every ``s3://`` location the spec names before any work starts.

    Inputs and the output prefix are listed (one request each, ``MaxKeys=1``), the tokenizer
    object is HEADed. A problem becomes a :class:`ConfigError` of one line naming the spec
    key: no credentials, a bucket that does not exist, access denied, an endpoint that cannot
    be reached. Messages name buckets, prefixes and the endpoint, never credentials.
    """
    from preproc.engine.plan import _base_dir

    s3 = spec.storage.s3
    # Fail fast on a dead endpoint: the run itself retries with the configured attempts.
    quick = s3.model_copy(update={"max_attempts": min(3, s3.max_attempts)})
    opts = s3_options(quick)
    checks: list[tuple[str, str, str, str]] = []       # (key, uri, op, bucket/key)
    for p in spec.input.paths:
        if _is_s3(p):
            prefix = _base_dir(p) if any(c in p for c in "*?[") else p
            checks.append(("input.paths", p, "list", _strip_s3(prefix)))
    if spec.output and _is_s3(spec.output):
        checks.append(("output", spec.output, "list", _strip_s3(spec.output)))
    tok = spec.tokenize.tokenizer
    if tok and _is_s3(tok):
        checks.append(("tokenize.tokenizer", tok, "head", _strip_s3(tok)))
    if not checks:
        return
    fs = _filesystem("s3", opts)
    done: set[tuple[str, str]] = set()
    for key, uri, op, path in checks:
        bucket, _, prefix = path.partition("/")
        if (op, path) in done:
            continue
        done.add((op, path))
        try:
            if op == "list":
                p = prefix.rstrip("/")
                fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=(p + "/") if p else "", MaxKeys=1)
            else:
                fs.call_s3("head_object", Bucket=bucket, Key=prefix)
        except FileNotFoundError as e:
            if op == "head" and _error_code(e) != "NoSuchBucket":
                continue  # a missing tokenizer object is reported by the tokenizer check
            raise ConfigError(f"{key}: S3 bucket {bucket!r} does not exist ({uri}{_at(s3)})") from None
        except Exception as e:  # noqa: BLE001 - classified below, anything else re-raised
            raise _preflight_error(e, key, uri, s3) from None


def _is_s3(uri: str) -> bool:
    return split_protocol(uri)[0] in _S3_PROTOCOLS


def _strip_s3(uri: str) -> str:
    return uri.split("://", 1)[1]


def _at(s3: "S3Spec") -> str:
    return f" at {s3.endpoint_url}" if s3.endpoint_url else ""


def _preflight_error(e: BaseException, key: str, uri: str, s3: "S3Spec") -> BaseException:
    import botocore.exceptions as bex

    if isinstance(e, bex.NoCredentialsError):
        return ConfigError(
            f"{key}: no AWS credentials found for {uri}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            f"AWS_PROFILE (or storage.s3.profile) or a credentials file, or use an instance or workload "
            f"identity (storage.s3.anonymous: true for public buckets)")
    if isinstance(e, bex.PartialCredentialsError):
        return ConfigError(f"{key}: incomplete AWS credentials for {uri}: {e}")
    if isinstance(e, bex.ProfileNotFound):
        return ConfigError(f"storage.s3.profile: {e}")
    if isinstance(e, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ProxyConnectionError)):
        where = s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        return ConfigError(f"{key}: cannot connect to {where} for {uri} ({type(e).__name__}); "
                           f"check storage.s3.endpoint_url and the network")
    if isinstance(e, PermissionError):
        code = _error_code(e) or "AccessDenied"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return ConfigError(f"{key}: the AWS credentials in use were refused for {uri} ({code}{_at(s3)})")
        return ConfigError(f"{key}: access denied to {uri} ({code}{_at(s3)}); check the permissions "
                           f"of the credentials in use")
    if isinstance(e, OSError):
        # 5xx / throttling that outlasted the retries: the store is down, the spec is fine.
        # Retryable (exit 1): the same command resumes from the markers once it is back.
        detail = (getattr(e, "strerror", None) or str(e)).splitlines()[0][:200]
        return StorageUnavailable(f"{key}: the object store is unavailable for {uri}{_at(s3)} ({detail}); "
                                  f"nothing was lost: run the same command again when it is back")
    return e


def _sweep_temporaries(folder: str, name: str) -> None:
    """Remove ``.<name>.tmp-*`` in ``folder``: an earlier attempt's, killed before its rename
    (only the index that writes ``name`` writes them, so they are its own)."""
    prefix = f".{name}.tmp-"
    try:
        with os.scandir(folder) as it:
            stale = [e.path for e in it if e.name.startswith(prefix)]
    except FileNotFoundError:
        return
    for p in stale:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:   # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:   # pragma: no cover - filesystems that refuse fsync on folders
        pass
    finally:
        os.close(fd)


class StorageUnavailable(PreprocError):
    """The object store keeps failing (5xx, throttling) after every retry."""


# ---------------------------------------------------------------------------------------
# The output store

class Store:
    """A run's output location. All paths given to methods are relative to it.

    ``storage`` as for :func:`open_fs`. The filesystem is looked up on each use (a dict hit),
    so a long-lived Store follows credential rotation.
    """

    def __init__(self, uri: str, storage: StorageLike = None):
        self.uri = uri
        self.storage = _as_storage(storage)
        fs, self.root = open_fs(uri, self.storage)
        self.local = _is_local(fs)
        self._local_fs = fs if self.local else None

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._local_fs is not None:
            return self._local_fs
        return open_fs(self.uri, self.storage)[0]

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def path(self, rel: str = "") -> str:
        return join(self.root, rel) if rel else self.root

    def url(self, rel: str = "") -> str:
        """A user-facing location (the URI the user gave, plus ``rel``)."""
        return join(self.uri, rel) if rel else self.uri

    # -- reading ---------------------------------------------------------------------------
    @_refreshing
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def open(self, rel: str, mode: str = "rb"):
        return self.fs.open(self.path(rel), mode)

    @_refreshing
    def read_bytes(self, rel: str) -> bytes:
        with self.open(rel, "rb") as f:
            return f.read()

    @_refreshing
    def read_ranges(self, rels: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
        """Bytes ``[start, end)`` of each file, in one call: concurrent requests on object
        stores (fsspec ``cat_ranges``), so many small ranges cost no more round trips."""
        if not rels:
            return []
        return list(self.fs.cat_ranges([self.path(r) for r in rels], starts, ends, on_error="raise"))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    @_refreshing
    def ls(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def open_atomic(self, rel: str) -> Iterator[io.BufferedIOBase]:
        """Write ``rel`` so that it appears whole or not at all.

        Locally the bytes go to ``.<name>.tmp-<random>`` beside it, are fsynced, renamed, and
        the folder is fsynced (a crash never leaves a renamed file with missing bytes);
        temporaries of ``rel`` left by a killed earlier attempt are swept first. The file's
        size and xxh3 are recorded for the running index's marker (:mod:`preproc.io.integrity`).
        """
        final = self.path(rel)
        if self.local:
            parent = posixpath.dirname(final)
            os.makedirs(parent, exist_ok=True)
            base = posixpath.basename(final)
            _sweep_temporaries(parent, base)
            tmp = posixpath.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:12]}")
            try:
                with open(tmp, "wb") as f:
                    w = integrity.HashingWriter(f)
                    yield w
                    f.flush()
                    os.fsync(f.fileno())
                    # Chaos tests kill here: the bytes are written, the name not yet published.
                    failpoint("commit", fault_context.stage, fault_context.index)
                os.replace(tmp, final)
                _fsync_dir(parent)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass        # never let the cleanup's error hide the first one
                raise
        else:
            # Object stores publish an object only when its upload completes; an exception
            # inside the block must abort the upload instead of committing a partial object.
            fs = self.fs
            f = fs.open(final, "wb")
            w = integrity.HashingWriter(f)
            try:
                yield w
                failpoint("commit", fault_context.stage, fault_context.index)
            except BaseException:
                discard = getattr(f, "discard", None)
                if discard is not None:
                    discard()
                else:  # pragma: no cover - non-object-store remote filesystems
                    f.close()
                    fs.rm(final)
                raise
            f.close()
        integrity.record(final, w.bytes, w.hexdigest())

    @_refreshing
    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_atomic(rel) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n")

    @_refreshing
    def rm(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # -- markers ---------------------------------------------------------------------------
    @staticmethod
    def marker_rel(stage: str, index: int) -> str:
        return f"{stage}/_done/{index:05d}.json"

    @staticmethod
    def failure_rel(stage: str, index: int) -> str:
        return f"{stage}/_failed/{index:05d}.json"

    def write_marker(self, stage: str, index: int, stats: dict[str, Any]) -> None:
        self.write_json(self.marker_rel(stage, index), stats)

    def marker_exists(self, stage: str, index: int) -> bool:
        return self.exists(self.marker_rel(stage, index))

    def read_marker(self, stage: str, index: int) -> dict[str, Any] | None:
        """The marker's stats; None when absent or unreadable (a truncated or corrupt marker
        proves nothing: the index runs again)."""
        try:
            m = self.read_json(self.marker_rel(stage, index))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: unreadable marker, ignored", self.url(self.marker_rel(stage, index)))
            return None
        return m if isinstance(m, dict) else None

    def done_indices(self, stage: str) -> set[int]:
        return {int(n.split(".")[0]) for n in self.ls(f"{stage}/_done") if n.endswith(".json") and n[0].isdigit()}

    def read_markers(self, stage: str) -> dict[int, dict[str, Any]]:
        return {i: m for i in sorted(self.done_indices(stage)) if (m := self.read_marker(stage, i)) is not None}
