"""Preflight: check every ``s3://`` location a spec names before any work starts.

A run that would fail on its first request (no credentials, a bucket that does not exist,
access denied, an endpoint that cannot be reached) fails here instead, with one line that
names the spec key, the bucket or prefix and the endpoint, never a credential.
:func:`preflight_error` also classifies such an error for other readers of an output
(``preproc status``, ``preproc report``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from preproc.errors import ConfigError, PreprocError
from preproc.io.listing import GLOB_CHARS, base_dir
from preproc.io.s3 import S3Spec, error_code, filesystem, is_s3, s3_options

if TYPE_CHECKING:
    from preproc.spec.model import Spec

__all__ = ["preflight", "preflight_error", "StorageUnavailable"]


class StorageUnavailable(PreprocError):
    """The object store keeps failing (5xx, throttling) after every retry."""


def preflight(spec: Spec) -> None:
    """Check every ``s3://`` location the spec names before any work starts.

    Inputs and the output prefix are listed (one request each, ``MaxKeys=1``), the tokenizer
    object is HEADed. A problem becomes a :class:`ConfigError` of one line naming the spec
    key: no credentials, a bucket that does not exist, access denied, an endpoint that cannot
    be reached. Messages name buckets, prefixes and the endpoint, never credentials.
    """
    s3 = spec.storage.s3
    # Fail fast on a dead endpoint: the run itself retries with the configured attempts.
    quick = s3.model_copy(update={"max_attempts": min(3, s3.max_attempts)})
    opts = s3_options(quick)
    checks: list[tuple[str, str, str, str]] = []       # (key, uri, op, bucket/key)
    for p in spec.input.paths:
        if is_s3(p):
            prefix = base_dir(p) if any(c in p for c in GLOB_CHARS) else p
            checks.append(("input.paths", p, "list", _strip_s3(prefix)))
    if spec.output and is_s3(spec.output):
        checks.append(("output", spec.output, "list", _strip_s3(spec.output)))
    tok = spec.tokenize.tokenizer
    if tok and is_s3(tok):
        checks.append(("tokenize.tokenizer", tok, "head", _strip_s3(tok)))
    if not checks:
        return
    fs = filesystem("s3", opts)
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
            if op == "head" and error_code(e) != "NoSuchBucket":
                continue  # a missing tokenizer object is reported by the tokenizer check
            raise ConfigError(f"{key}: S3 bucket {bucket!r} does not exist ({uri}{_at(s3)})") from None
        except Exception as e:  # noqa: BLE001 - classified below, anything else re-raised
            raise preflight_error(e, key, uri, s3) from None


def _strip_s3(uri: str) -> str:
    return uri.split("://", 1)[1]


def _at(s3: S3Spec) -> str:
    return f" at {s3.endpoint_url}" if s3.endpoint_url else ""


def preflight_error(e: BaseException, key: str, uri: str, s3: S3Spec) -> BaseException:
    """The one-line error for a failed request to ``uri`` (spec key ``key``): a
    :class:`ConfigError` for what the user must fix (credentials, profile, endpoint, access),
    :class:`StorageUnavailable` for a store that is down (retryable), else ``e`` itself."""
    import botocore.exceptions as bex  # botocore comes with s3fs, an optional extra

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
        code = error_code(e) or "AccessDenied"
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
