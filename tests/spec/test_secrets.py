"""No secrets in the clear: the spec refuses credentials (one line, exit 2, the safe way
named, the value never echoed); logs redact URL user info and signed request headers at
every verbosity; nothing planted in the environment or referenced from the spec reaches an
output file, a log line or a rendered manifest."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import preproc
from preproc.errors import ConfigError
from preproc.spec.secrets import check_spec, redact

ROOT = Path(__file__).resolve().parents[2]
VALUE = "planted-Secret-Value-42"


@pytest.mark.parametrize("raw, key", [
    ({"executor": {"options": {"env": {"AWS_SECRET_ACCESS_KEY": VALUE}}}}, "executor.options.env.AWS_SECRET_ACCESS_KEY"),
    ({"executor": {"options": {"env": {"AWS_ACCESS_KEY_ID": VALUE}}}}, "AWS_ACCESS_KEY_ID"),
    ({"executor": {"options": {"env": {"HF_TOKEN": VALUE}}}}, "HF_TOKEN"),
    ({"executor": {"options": {"env": {"DB_PASSWORD": VALUE}}}}, "DB_PASSWORD"),
    ({"executor": {"kind": "ray", "options": {"runtime_env": {"env_vars": {"MY_SECRET": VALUE}}}}}, "MY_SECRET"),
    ({"executor": {"options": {"kuberay": {"env": {"GITHUB_TOKEN": VALUE}}}}}, "GITHUB_TOKEN"),
    ({"executor": {"options": {"extra": [{"name": "AWS_SESSION_TOKEN", "value": VALUE}]}}}, "AWS_SESSION_TOKEN"),
    ({"metrics": {"pushgateway": f"http://bob:{VALUE}@pushgateway:9091"}}, "metrics.pushgateway"),
    ({"storage": {"s3": {"endpoint_url": f"https://admin:{VALUE}@minio:9000"}}}, "endpoint_url"),
    ({"input": {"paths": [f"s3://AKIA:{VALUE}@bucket/x/*.jsonl"]}}, "input.paths"),
])
def test_spec_refuses_credentials_anywhere(raw, key):
    spec = {"input": {"paths": ["x/*.jsonl"]}, **raw}
    with pytest.raises(ConfigError) as e:
        preproc.load_spec(spec)
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg
    assert key in msg and VALUE not in msg
    assert "secretRef" in msg or "env_from" in msg                  # the safe way is named
    assert "credential chain" in msg and "pushgateway_auth_file" in msg


@pytest.mark.parametrize("raw", [
    {"executor": {"kind": "k8s", "options": {"env_from": ["hf-token"], "s3": {"secret": "s3-creds"},
                                              "env": {"HF_HOME": "/tmp/hf", "PREPROC_TOKENIZER_THREADS": "2"}}}},
    {"tokenize": {"eos": "<|endoftext|>", "encode_special_tokens": True}},    # knob names may say token
    {"metrics": {"pushgateway": "http://pushgateway:9091", "pushgateway_auth_file": "/etc/pg/auth"}},
    {"input": {"paths": ["s3://bucket/a@b/*.jsonl"]}},                      # '@' in a path is no user info
])
def test_references_to_secrets_are_allowed(raw):
    check_spec(raw)
    preproc.load_spec({"input": {"paths": ["x/*.jsonl"]}, **raw})


def test_cli_refusal_is_one_line_exit_2(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"input": {"paths": ["x/*.jsonl"]}, "output": str(tmp_path / "out"),
                                    "executor": {"options": {"env": {"AWS_SECRET_ACCESS_KEY": VALUE}}}}))
    r = subprocess.run([sys.executable, "-m", "preproc", "run", str(spec)], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and VALUE not in r.stderr + r.stdout
    assert not (tmp_path / "out").exists()


def test_redact_botocore_debug_lines():
    header = ("Sending http request: <AWSPreparedRequest stream_output=False, method=GET, url=https://s3/b?x=1, "
              "headers={'User-Agent': b'Botocore/1.35', 'X-Amz-Date': b'20250101T000000Z', "
              "'X-Amz-Security-Token': b'FwoGZXIvYXdzEPlanted', 'Authorization': b'AWS4-HMAC-SHA256 "
              "Credential=AKIAPLANTED/20250101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, "
              "Signature=0123abcdef'}>")
    out = redact(header)
    for s in ("FwoGZXIvYXdzEPlanted", "AKIAPLANTED", "0123abcdef"):
        assert s not in out
    assert "X-Amz-Date': b'20250101T000000Z'" in out and "User-Agent" in out
    canonical = "GET\n/b\n\nhost:s3\nx-amz-date:20250101T000000Z\nx-amz-security-token:FwoGPlanted\n"
    assert "FwoGPlanted" not in redact(canonical) and "x-amz-date:20250101T000000Z" in redact(canonical)
    assert redact("cannot push to http://bob:hunter22@pg:9091/metrics") == "cannot push to http://[REDACTED]@pg:9091/metrics"
    assert "Planted" not in redact("<Credentials><SessionToken>PlantedTok</SessionToken></Credentials>")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_planted_secrets_reach_no_output_log_or_manifest(s3, demo_inputs, tmp_path):
    planted = {"AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEYID0001", "AWS_SECRET_ACCESS_KEY": "planted/Secret+Access0Key",
               "AWS_SESSION_TOKEN": "PlantedSessionToken0001", "HF_TOKEN": "hf_PlantedHuggingFaceTok",
               "PGPASS": "pg-Planted-Pass-0001"}
    b = s3.bucket("sec")
    s3.upload(demo_inputs / "input", b, "corpus")
    s3.client.put_object(Bucket=b, Key="models/tokenizer.json", Body=(demo_inputs / "tokenizer.json").read_bytes())
    auth = tmp_path / "pushgateway-auth"
    auth.write_text(f"pguser:{planted['PGPASS']}\n")
    spec = {"input": {"paths": [f"s3://{b}/corpus/*"]}, "output": f"s3://{b}/out", "shards": 2,
            "tokenize": {"tokenizer": f"s3://{b}/models/tokenizer.json"}, "storage": s3.storage,
            "executor": {"workers": 2, "options": {"env_from": ["hf-token"], "s3": {"secret": "s3-creds"}}},
            "metrics": {"pushgateway_auth_file": str(auth)}}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    # The environment wins over the spec for the Pushgateway: a careless URL with user info
    # (to a closed port, so the push fails and its warning is logged).
    env = s3.env(**{k: v for k, v in planted.items() if k != "PGPASS"},
                 PREPROC_PUSHGATEWAY=f"http://pguser:{planted['PGPASS']}@127.0.0.1:{_closed_port()}")
    r = subprocess.run([sys.executable, "-m", "preproc", "-v", "run", str(spec_file)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    logs = r.stdout + r.stderr
    # The run did log what would leak: signed requests (botocore DEBUG) and the failed push.
    assert "X-Amz-Security-Token" in logs and "Authorization" in logs and "[REDACTED]" in logs
    assert "cannot push to http://[REDACTED]@127.0.0.1" in logs
    texts = {"<logs>": logs}
    for key in s3.keys(b, "out/"):
        texts[key] = s3.client.get_object(Bucket=b, Key=key)["Body"].read().decode("utf-8", "replace")
    assert any(k.endswith("plan.json") for k in texts) and any(k.endswith("dataset.json") for k in texts)
    # Every rendered manifest (k8s Jobs, the RayJob) carries the Secret references, not values.
    refs = {"env_from": ["hf-token"], "s3": {"secret": "s3-creds"}}
    for kind, options in (("k8s", refs), ("ray", {"kuberay": refs})):
        f = tmp_path / f"spec-{kind}.yaml"
        f.write_text(yaml.safe_dump({**spec, "executor": {"kind": kind, "options": options}}))
        m = subprocess.run([sys.executable, "-m", "preproc", "manifests", str(f), "--executor", kind],
                           env=env, capture_output=True, text=True, timeout=120, cwd=str(ROOT))
        assert m.returncode == 0, m.stderr
        assert "hf-token" in m.stdout and "s3-creds" in m.stdout
        texts[f"<manifests {kind}>"] = m.stdout + m.stderr
    leaks = [(where, name) for where, text in texts.items() for name, v in planted.items() if v in text]
    assert not leaks, leaks
