"""A real S3 API on loopback for tests: moto's ``ThreadedMotoServer`` on 127.0.0.1 and a
free port, plus an optional fault-injecting proxy in front of it.

tests/conftest.py imports the fixtures once; any test takes them by name::

    def test_something(s3):
        bucket = s3.bucket()                      # a fresh, empty bucket
        spec["storage"] = s3.storage              # {"s3": {"endpoint_url": ...}}
        s3.client.put_object(Bucket=bucket, Key="k", Body=b"...")

``s3`` sets dummy AWS credentials (and hides the developer's own AWS config files) for the
test and restores the environment afterwards; subprocesses get them from :meth:`S3.env`.
``s3.proxy()`` returns a :class:`FaultProxy` whose endpoint answers like the server except
for the failures a test asks for (503 SlowDown, 500, 403 AccessDenied, 400 ExpiredToken).
Everything listens on 127.0.0.1 only; the proxy's loops are bounded by the requests a test
makes.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

DUMMY_KEY_ID = "testing-key-id"
DUMMY_SECRET = "testing-secret-never-printed"
# Variables that could point boto at real credentials or another endpoint; hidden in tests.
_HIDE = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
         "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
         "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "PREPROC_S3")


def dummy_env(tmp: Path | str) -> dict[str, str]:
    """AWS variables for tests: dummy keys, no config files, no instance metadata lookups."""
    tmp = Path(tmp)
    return {"AWS_ACCESS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config")}


class S3Server:
    """moto's S3 in a thread of this process, on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET)

    def stop(self) -> None:
        self._server.stop()


@dataclass
class Fault:
    status: int
    code: str
    count: int                  # how many matching requests fail
    bucket: str | None = None   # only requests for this bucket (None: any)
    method: str | None = None   # only requests with this HTTP method (None: any)
    served: int = 0


class FaultProxy:
    """An HTTP proxy to the S3 server that fails chosen requests with S3 error responses."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("://", 1)[1]
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []   # (method, path) of every request seen
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                    fault = proxy._match(self.command, self.path)
                    flaky = proxy._flaky_kind()
                if flaky == "drop":
                    # A dropped connection: no response at all.
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if flaky == "slow":
                    time.sleep(proxy.slow_s)
                elif flaky is not None:
                    status, code = flaky
                    fault = Fault(status, code, 1)
                if fault is not None:
                    msg = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                           f"<Message>injected {fault.code}</Message><RequestId>t</RequestId></Error>").encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(msg)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                length = str(len(data))
                for k, v in resp.getheaders():
                    if k.lower() == "content-length" and self.command == "HEAD":
                        length = v   # a HEAD answer has no body but tells the object's size
                    elif k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _read_chunked(self) -> bytes:
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def flaky(self, every: int, kinds=("slowdown", "500", "drop", "slow"), slow_s: float = 0.5) -> None:
        """Fail every ``every``-th request, rotating through ``kinds``: 503 SlowDown,
        500 InternalError, a dropped connection, a slow (delayed) answer. ``every=0`` stops."""
        with self._lock:
            self.every, self.kinds, self.slow_s, self._n = every, tuple(kinds), slow_s, 0
            self.injected = {k: 0 for k in self.kinds}

    def down(self, is_down: bool = True) -> None:
        """While down, every request is answered 503 (the store is unavailable)."""
        with self._lock:
            self.is_down = is_down

    def _flaky_kind(self):
        if getattr(self, "is_down", False):
            return (503, "ServiceUnavailable")
        every = getattr(self, "every", 0)
        if not every:
            return None
        self._n += 1
        if self._n % every:
            return None
        kind = self.kinds[(self._n // every) % len(self.kinds)]
        self.injected[kind] += 1
        return {"slowdown": (503, "SlowDown"), "500": (500, "InternalError")}.get(kind, kind)

    def _match(self, method: str, path: str) -> Fault | None:
        bucket = path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        for f in self.faults:
            if f.served < f.count and f.bucket in (None, bucket) and f.method in (None, method):
                f.served += 1
                return f
        return None

    def fail(self, count: int, *, status: int = 503, code: str = "SlowDown", bucket: str | None = None,
             method: str | None = None) -> Fault:
        """Answer the next ``count`` requests (for ``bucket``, with ``method``) with this error."""
        f = Fault(status, code, count, bucket, method)
        with self._lock:
            self.faults.append(f)
        return f

    def deny(self, bucket: str) -> Fault:
        """Every request for ``bucket`` gets 403 AccessDenied."""
        return self.fail(10**9, status=403, code="AccessDenied", bucket=bucket)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class S3:
    """What the ``s3`` fixture gives a test."""

    server: S3Server
    tmp: Path
    _proxies: list[FaultProxy] = field(default_factory=list)

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    @property
    def storage(self) -> dict:
        """The spec's ``storage`` section for this server."""
        return {"s3": {"endpoint_url": self.endpoint_url, "max_attempts": 3}}

    @property
    def client(self):
        return self.server.client()

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for subprocesses: this one, minus real AWS settings, plus dummy keys."""
        env = {k: v for k, v in os.environ.items() if k not in _HIDE}
        env.update(dummy_env(self.tmp))
        env.update(extra)
        return env

    def bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def upload(self, local: Path, bucket: str, prefix: str) -> None:
        """Every file under ``local`` to ``s3://bucket/prefix/<relative path>``."""
        c = self.client
        for p in sorted(Path(local).rglob("*")):
            if p.is_file():
                c.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(local).as_posix()}", Body=p.read_bytes())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        c = self.client
        out, token = [], None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            r = c.list_objects_v2(**kw)
            out += [o["Key"] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return out
            token = r["NextContinuationToken"]

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def tree(self, bucket: str, prefix: str) -> dict[str, bytes]:
        """name → bytes of every object under ``prefix/`` (relative names)."""
        return {k[len(prefix) + 1:]: self.get(bucket, k) for k in self.keys(bucket, prefix + "/")}

    def proxy(self) -> FaultProxy:
        p = FaultProxy(self.endpoint_url)
        self._proxies.append(p)
        return p


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch):
    """A loopback S3 server with dummy credentials in the environment of this test."""
    from preproc.io.s3 import forget_filesystems

    for k in _HIDE:
        monkeypatch.delenv(k, raising=False)
    for k, v in dummy_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    forget_filesystems()
    handle = S3(s3_server, tmp_path)
    yield handle
    for p in handle._proxies:
        p.stop()
    forget_filesystems()
