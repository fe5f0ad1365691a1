"""The demo pipeline with inputs, tokenizer and output on S3 (moto's server on loopback):
byte-identical to the local run, resumable after lost markers and after a kill, and
planned exactly like local inputs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import preproc
from tests.conftest import read_tree
from tests.s3server import DUMMY_SECRET

CLEAN = {"defaults": False, "normalize": True}   # independent of the quality filters


def _spec(inputs: str, output: str, tokenizer: str, storage: dict | None = None) -> dict:
    spec = {"input": {"paths": [inputs]}, "output": output, "shards": 4, "clean": CLEAN,
            "dedup": {"exact": True}, "tokenize": {"tokenizer": tokenizer}, "executor": {"workers": 2}}
    if storage:
        spec["storage"] = storage
    return spec


@pytest.fixture(scope="module")
def local_run(demo_inputs, tmp_path_factory):
    """The reference: the same pipeline on local files."""
    out = tmp_path_factory.mktemp("local") / "out"
    r = preproc.run(_spec(str(demo_inputs / "input" / "*"), str(out), str(demo_inputs / "tokenizer.json")))
    return out, r


def _upload_inputs(s3, demo_inputs) -> str:
    b = s3.bucket("data")
    s3.upload(demo_inputs / "input", b, "corpus")
    s3.client.put_object(Bucket=b, Key="models/tokenizer.json", Body=(demo_inputs / "tokenizer.json").read_bytes())
    return b


def _s3_spec(s3, b: str, out: str = "out") -> dict:
    return _spec(f"s3://{b}/corpus/*", f"s3://{b}/{out}", f"s3://{b}/models/tokenizer.json", s3.storage)


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preproc", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(Path(__file__).resolve().parents[2]))


def _same_tokens(s3, b: str, out: str, local_out: Path) -> None:
    remote = s3.tree(b, f"{out}/tokens")
    local = read_tree(local_out)
    assert sorted(remote) == sorted(local) and len(local) == 12   # 4 shards × parquet, bin, idx
    for name in local:
        assert remote[name] == local[name], name


def test_s3_run_is_identical_to_local_and_resumes(s3, demo_inputs, local_run, tmp_path):
    local_out, ref = local_run
    b = _upload_inputs(s3, demo_inputs)
    spec = _s3_spec(s3, b)
    r = preproc.run(spec)
    for k in ("read", "kept", "tokens", "rejected", "duplicates", "filtered"):
        assert r.stats[k] == ref.stats[k], k
    assert r.stats["kept"] == 3000 and r.stats["duplicates"]["exact"] == 150
    _same_tokens(s3, b, "out", local_out)

    # Nothing the run wrote holds a credential; plan.json keeps the (secret-free) settings.
    for key in s3.keys(b, "out/"):
        assert DUMMY_SECRET.encode() not in s3.get(b, key), key
    plan = json.loads(s3.get(b, "out/plan.json"))
    assert plan["spec"]["storage"]["s3"]["endpoint_url"] == s3.endpoint_url

    # Lose some work, as a crash would: the rerun redoes exactly that and nothing else.
    c = s3.client
    lost = ["clean/_done/00002.json", "clean/part-00002.parquet", "tokenize/_done/00001.json",
            "tokens/part-00001.bin", "tokens/part-00001.idx", "tokens/part-00001.parquet",
            "finalize/_done/00000.json", "dataset.json", "stats.json"]
    for k in lost:
        c.delete_object(Bucket=b, Key=f"out/{k}")
    kept_marker = c.head_object(Bucket=b, Key="out/clean/_done/00000.json")["LastModified"]
    time.sleep(1.1)   # LastModified has a resolution of one second
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    p = _cli(["run", str(spec_file)], s3.env())
    assert p.returncode == 0, p.stderr[-2000:]
    assert DUMMY_SECRET not in p.stdout + p.stderr
    _same_tokens(s3, b, "out", local_out)
    assert c.head_object(Bucket=b, Key="out/clean/_done/00000.json")["LastModified"] == kept_marker
    assert json.loads(s3.get(b, "out/dataset.json"))["documents"] == 3000

    # A worker in a pod reaches the output through the standard AWS_ENDPOINT_URL alone.
    st = _cli(["status", f"s3://{b}/out", "--json"], s3.env(AWS_ENDPOINT_URL=s3.endpoint_url))
    assert st.returncode == 0, st.stderr[-2000:]
    assert json.loads(st.stdout)["complete"] is True


def test_s3_killed_run_resumes(s3, demo_inputs, local_run, tmp_path):
    local_out, _ = local_run
    b = _upload_inputs(s3, demo_inputs)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_s3_spec(s3, b, "killed")))
    # The coordinator and its workers die as the first tokenize marker is about to be written.
    env = dict(s3.env(), PREPROC_FAILPOINTS="point=marker,stage=tokenize,action=killpg")
    proc = subprocess.run([sys.executable, "-m", "preproc", "run", str(spec_file)], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert s3.keys(b, "killed/clean/_done/")
    assert not s3.keys(b, "killed/dataset.json")
    p = _cli(["run", str(spec_file)], s3.env())
    assert p.returncode == 0, p.stderr[-2000:]
    _same_tokens(s3, b, "killed", local_out)


def test_s3_inputs_split_like_local(s3, tmp_path):
    """Big uncompressed JSONL is cut at byte ranges, Parquet at row groups, on S3 as locally."""
    src = tmp_path / "big"
    src.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": f"document {i} " + "word " * (i % 50 + 20)}) for i in range(12000)]
    (src / "big.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(6000)], "text": [f"row {i} " * 30 for i in range(6000)]}),
                   src / "rows.parquet", row_group_size=500, compression="none")
    b = s3.bucket()
    s3.upload(src, b, "in")
    common = {"shards": 6, "clean": CLEAN, "tokenize": {"tokenizer": None}}

    def shards(paths, storage=None):
        spec = {"input": {"paths": paths}, "output": str(tmp_path / "o"), **common, "storage": storage or {}}
        p = preproc.load_spec(spec)
        from preproc.engine.plan import plan_shards
        from preproc.io.listing import list_inputs

        files = list_inputs(p)
        return [[(x.rel, x.start, x.end, x.row_groups, x.row_offset, x.bytes) for x in sh.splits]
                for sh in plan_shards(files, shards=6, target_shard_bytes=p.target_shard_bytes, storage=p.storage)]

    local = shards([str(src / "*")])
    remote = shards([f"s3://{b}/in/*"], s3.storage)
    assert remote == local
    flat = [x for sh in local for x in sh]
    assert sum(1 for x in flat if x[0] == "big.jsonl") > 1 and sum(1 for x in flat if x[3]) > 1
