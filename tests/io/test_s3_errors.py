"""S3 problems found before any work (one line, exit code 2, nothing written), retries on
throttling and 5xx, and no stale credentials in long-running processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import preproc
from preproc.errors import ConfigError
from preproc.io import s3 as storage
from preproc.io.s3 import open_fs
from preproc.io.store import Store
from tests.s3server import DUMMY_SECRET

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bucket_with_inputs(s3, demo_inputs):
    b = s3.bucket("in")
    s3.client.put_object(Bucket=b, Key="corpus/web-a.jsonl", Body=(demo_inputs / "input" / "web-a.jsonl").read_bytes())
    s3.client.put_object(Bucket=b, Key="tok/tokenizer.json", Body=(demo_inputs / "tokenizer.json").read_bytes())
    return b


def _run_cli(tmp_path, spec: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(spec))
    return subprocess.run([sys.executable, "-m", "preproc", "run", str(f)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=str(ROOT))


def _spec(s3, b: str, output: str, **storage) -> dict:
    return {"input": {"paths": [f"s3://{b}/corpus/*.jsonl"]}, "output": output,
            "clean": {"defaults": False, "normalize": True},
            "tokenize": {"tokenizer": f"s3://{b}/tok/tokenizer.json"},
            "storage": {"s3": {**s3.storage["s3"], **storage}}}


def _one_line(p: subprocess.CompletedProcess) -> str:
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2, p.stderr[-3000:]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("preproc: error: ")
    assert DUMMY_SECRET not in p.stderr + p.stdout
    return lines[0]


def _all_objects(s3) -> dict[str, list[str]]:
    c = s3.client
    return {b["Name"]: s3.keys(b["Name"]) for b in c.list_buckets()["Buckets"]}


def test_missing_output_bucket(s3, bucket_with_inputs, tmp_path):
    before = _all_objects(s3)
    p = _run_cli(tmp_path, _spec(s3, bucket_with_inputs, "s3://no-such-bucket-here/out"), s3.env())
    line = _one_line(p)
    assert "output: S3 bucket 'no-such-bucket-here' does not exist" in line and s3.endpoint_url in line
    assert _all_objects(s3) == before   # nothing written anywhere


def test_missing_input_bucket(s3, bucket_with_inputs, tmp_path):
    spec = _spec(s3, bucket_with_inputs, f"s3://{bucket_with_inputs}/out")
    spec["input"]["paths"] = ["s3://no-such-input-bucket/corpus/*.jsonl"]
    line = _one_line(_run_cli(tmp_path, spec, s3.env()))
    assert "input.paths: S3 bucket 'no-such-input-bucket' does not exist" in line
    assert not s3.keys(bucket_with_inputs, "out/")


def test_missing_credentials(s3, bucket_with_inputs, tmp_path):
    env = s3.env()
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    before = _all_objects(s3)
    line = _one_line(_run_cli(tmp_path, _spec(s3, bucket_with_inputs, f"s3://{bucket_with_inputs}/out"), env))
    assert "no AWS credentials found" in line and "AWS_ACCESS_KEY_ID" in line
    assert _all_objects(s3) == before


def test_access_denied(s3, bucket_with_inputs, tmp_path):
    proxy = s3.proxy()
    out = s3.bucket("out")
    proxy.deny(out)
    spec = _spec(s3, bucket_with_inputs, f"s3://{out}/run", endpoint_url=proxy.endpoint_url)
    line = _one_line(_run_cli(tmp_path, spec, s3.env()))
    assert f"output: access denied to s3://{out}/run (AccessDenied" in line
    assert not s3.keys(out)


def test_unreachable_endpoint(s3, bucket_with_inputs, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]   # closed again below: nothing listens there
    spec = _spec(s3, bucket_with_inputs, f"s3://{bucket_with_inputs}/out", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"cannot connect to http://127\.0\.0\.1:\d+ for s3://"):
        preproc.plan(spec)


def test_secrets_are_refused_in_the_spec_without_echo(s3, bucket_with_inputs, tmp_path):
    spec = _spec(s3, bucket_with_inputs, f"s3://{bucket_with_inputs}/out")
    spec["storage"]["s3"]["aws_secret_access_key"] = "AKIA-LEAK-ME-NOT"
    line = _one_line(_run_cli(tmp_path, spec, s3.env()))
    assert "storage.s3.aws_secret_access_key: credentials are never accepted in the spec" in line
    assert "credential chain" in line                          # the safe way is named
    assert "LEAK-ME-NOT" not in line


# -- retries ---------------------------------------------------------------------------------

def test_throttling_and_5xx_are_retried(s3):
    proxy = s3.proxy()
    b = s3.bucket()
    st = Store(f"s3://{b}/x", {"s3": {"endpoint_url": proxy.endpoint_url, "max_attempts": 5}})
    slow = proxy.fail(2, status=503, code="SlowDown")
    st.write_bytes("a.bin", b"payload")
    assert slow.served == 2
    err = proxy.fail(2, status=500, code="InternalError")
    assert st.read_bytes("a.bin") == b"payload"
    assert err.served == 2
    busy = proxy.fail(2, status=503, code="ServiceUnavailable")
    assert st.exists("a.bin") and busy.served == 2
    assert s3.get(b, "x/a.bin") == b"payload"


def test_retries_are_bounded(s3):
    proxy = s3.proxy()
    b = s3.bucket()
    st = Store(f"s3://{b}/x", {"s3": {"endpoint_url": proxy.endpoint_url, "max_attempts": 2}})
    st.write_bytes("a.bin", b"payload")
    err = proxy.fail(1000, status=500, code="InternalError")
    with pytest.raises(OSError):
        st.read_bytes("a.bin")
    assert 2 <= err.served <= 12          # bounded by attempts (counted by the proxy), not by a clock


# -- credentials in long-running processes -----------------------------------------------------

def test_filesystems_follow_credential_changes(s3, monkeypatch):
    b = s3.bucket()
    opts = s3.storage
    fs1, _ = open_fs(f"s3://{b}/a", opts)
    assert open_fs(f"s3://{b}/b", opts)[0] is fs1               # cached while nothing changes
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-secret")
    fs2, _ = open_fs(f"s3://{b}/a", opts)
    assert fs2 is not fs1                                       # rotated key: a new client
    monkeypatch.setattr(storage, "FS_MAX_AGE_S", 0.0)
    assert open_fs(f"s3://{b}/a", opts)[0] is not fs2           # expired: rebuilt
    import fsspec

    assert fsspec.get_filesystem_class("s3")._cache == {}       # fsspec's cache is never used


def test_expired_token_drops_cached_credentials(s3):
    proxy = s3.proxy()
    b = s3.bucket()
    st = Store(f"s3://{b}/x", {"s3": {"endpoint_url": proxy.endpoint_url}})
    st.write_bytes("m.json", b"{}")
    before = st.fs
    expired = proxy.fail(1, status=400, code="ExpiredToken", method="GET")
    assert st.read_json("m.json") == {}                         # retried once with new credentials
    assert expired.served == 1 and st.fs is not before


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_of_an_unreachable_endpoint_say_one_line(tmp_path, command):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]   # closed again below: nothing listens there
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY=DUMMY_SECRET,
               AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    p = subprocess.run([sys.executable, "-m", "preproc", command, "s3://runs/web-v1"], env=env,
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    line = _one_line(p)
    assert f"cannot connect to http://127.0.0.1:{port} for s3://runs/web-v1" in line


def test_reads_from_outside_a_run_have_bounded_retries():
    """A look at an output must not retry a dead endpoint for minutes like a run does."""
    from preproc.observe.outputs import READ_ATTEMPTS, READ_CONNECT_TIMEOUT_S, reading_storage

    st = reading_storage({"s3": {"max_attempts": 20, "connect_timeout_s": 30, "endpoint_url": "http://x:1"}})
    assert st.s3.max_attempts == READ_ATTEMPTS <= 2 and st.s3.connect_timeout_s == READ_CONNECT_TIMEOUT_S <= 5
    assert st.s3.endpoint_url == "http://x:1"
    opts = storage.s3_options(st.s3)["config_kwargs"]
    assert opts["retries"]["max_attempts"] == READ_ATTEMPTS and opts["connect_timeout"] == READ_CONNECT_TIMEOUT_S
