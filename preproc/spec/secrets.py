"""No secrets in the clear: the spec refuses them, logs redact them.

The spec is copied into ``plan.json``, ``dataset.json``, Kubernetes ConfigMaps, every stage
Job's environment and a RayJob's runtime env, so a credential there would be everywhere.
:func:`check_spec` walks the raw spec before validation and refuses

* a key that names a credential and holds a literal value — environment-style keys such as
  ``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``, ``DB_PASSWORD``, ``AWS_ACCESS_KEY_ID`` (``*SECRET*``,
  ``*PASSWORD*``/``*PASSWD*``, a ``TOKEN`` word, ``AWS_*KEY*``, ``*API_KEY*``,
  ``*PRIVATE_KEY*``, ``*CREDENTIALS*``) — wherever it is (``executor.options.env``,
  ``runtime_env.env_vars``, ...), and the ``{name: ..., value: ...}`` form of a Kubernetes env;
* any string that is a URL with user info (``https://user:pass@host``), e.g. a Pushgateway.

The error is one line naming the key (never the value) and the safe way: a Kubernetes Secret
through ``executor.options.env_from`` / ``s3.secret`` (``envFrom: secretRef``), the standard AWS
credential chain, ``metrics.pushgateway_auth_file``. A structure under such a key
(``secretRef: {name: ...}``) is a reference, not a secret, and is allowed.

:func:`redact` removes URL user info, signed-request headers (``Authorization``,
``X-Amz-Security-Token``, ``X-Amz-Credential``/``Signature``), credential fields of AWS
responses, and the values of this process's secret environment variables, from any text;
:func:`install_log_redaction` applies it to every log record of the process at every
verbosity (botocore's DEBUG output prints signed headers and session tokens).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from preproc.errors import ConfigError

__all__ = ["check_spec", "secret_name", "has_userinfo", "redact", "install_log_redaction"]

_TOKEN_WORD = re.compile(r"(^|[_\-.])TOKEN($|[_\-.])")
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/@\s'\"]+)@")

SAFE_WAY = ("put credentials in a Kubernetes Secret and reference it (executor.options.env_from: "
            "[secret-name], or executor.options.s3.secret), or let the standard AWS credential chain "
            "find them (environment, AWS_PROFILE, ~/.aws, workload identity); a Pushgateway's basic "
            "auth goes in a file named by metrics.pushgateway_auth_file or PREPROC_PUSHGATEWAY_AUTH_FILE")


# Keys that name where a secret is, not the secret: ``s3.secret``/``secretName`` (a Secret's
# name), ``*_FILE``/``*_PATH`` (AWS_WEB_IDENTITY_TOKEN_FILE), ``secretRef``/``secretKeyRef``.
_REFERENCE = re.compile(r"(?i)(^secret$|(file|path|ref|name)$)")


def secret_name(key: str) -> bool:
    """Whether an (environment-style) key names a credential."""
    if _REFERENCE.search(key.replace("-", "_")):
        return False
    k = key.upper().replace("-", "_")
    return ("SECRET" in k or "PASSWORD" in k or "PASSWD" in k or "CREDENTIAL" in k
            or "API_KEY" in k or "APIKEY" in k or "PRIVATE_KEY" in k
            or bool(_TOKEN_WORD.search(k)) or (k.startswith("AWS_") and "KEY" in k))


def has_userinfo(text: str) -> bool:
    return bool(_URL_USERINFO.search(text))


# Pipeline knobs, not places for credentials: their key names may say "token" (eos_token).
_KNOB_SECTIONS = {"tokenize", "clean", "dedup"}


def _walk(node: Any, where: str, names: bool = True) -> str | None:
    if isinstance(node, dict) and names:
        name, value = node.get("name"), node.get("value")
        if isinstance(name, str) and value not in (None, "") and not isinstance(value, (dict, list)) \
                and secret_name(name):
            return f"{where}: the environment variable {name} holds a literal credential"
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{where}.{k}" if where else str(k)
            if names and isinstance(v, (str, int, float)) and not isinstance(v, bool) and v != "" \
                    and secret_name(str(k)):
                return f"{here}: credentials are never accepted in the spec"
            found = _walk(v, here, names and not (where == "" and k in _KNOB_SECTIONS))
            if found:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _walk(v, f"{where}[{i}]", names)
            if found:
                return found
    elif isinstance(node, str) and has_userinfo(node):
        return f"{where}: a URL with a user name or password"
    return None


def check_spec(raw: Any) -> None:
    """Raise a one-line :class:`ConfigError` if the raw spec holds a credential."""
    problem = _walk(raw, "")
    if problem:
        raise ConfigError(f"{problem} (the spec is copied into plan.json, dataset.json and "
                          f"Kubernetes objects); {SAFE_WAY}")


# -- redaction ------------------------------------------------------------------------------

_R = "[REDACTED]"
_PATTERNS = [
    # b'...' / '...' / "..." values of signed headers and credential fields, as botocore logs
    # them (dict reprs) and as canonical requests show them (name:value lines).
    re.compile(r"(?i)((?:authorization|x-amz-security-token|x-amz-credential|x-amz-signature|sessiontoken|"
               r"secretaccesskey|accesskeyid|aws_secret_access_key|aws_session_token|aws_access_key_id|"
               r"\bpassword\b)['\"]?\s*[:=]\s*b?['\"]?)([^'\"\s,}&<]+(?: [^'\"\n,}&<]+)*)"),
    re.compile(r"(?i)(['\"]token['\"]\s*:\s*['\"])([^'\"]+)"),
    # XML bodies of STS/IMDS-style responses.
    re.compile(r"(?i)(<(SessionToken|SecretAccessKey|AccessKeyId|Token)>)([^<]*)(?=</\2>)"),
    re.compile(r"(Credential=)([^,\s/'\"]+)"),
    re.compile(r"(Signature=)([0-9a-fA-F]+)"),
]


def _env_secrets() -> list[str]:
    vals = [v for k, v in os.environ.items() if len(v) >= 8 and secret_name(k)]
    return sorted(set(vals), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every credential we can recognise replaced by ``[REDACTED]``."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{_R}@", text)
    for p in _PATTERNS:
        text = p.sub(lambda m: m.group(1) + _R, text)
    for v in _env_secrets():
        if v in text:
            text = text.replace(v, _R)
    return text


_installed = False


def install_log_redaction() -> None:
    """Redact every log record this process creates (any logger, any level, any handler —
    including ``logging.lastResort`` in a worker that configured none). Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    base = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to the handler
            return record
        clean = redact(msg)
        if clean != msg or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
