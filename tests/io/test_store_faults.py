"""Flaky storage: S3 (moto on loopback) behind a proxy that fails a fraction of requests —
503 SlowDown, 500, dropped connections, slow answers. The run completes with outputs
identical to an undisturbed run; when the store stays down the run stops with a clear error,
and once it is back the same command resumes from the markers."""

from __future__ import annotations

import preproc
from preproc.engine.runner import prepare
from preproc.engine.stages import run_index

CLEAN = {"defaults": False, "normalize": True, "length": {"min_chars": 50}}


def _spec(bucket, endpoint, out):
    return {"input": {"paths": [f"s3://{bucket}/corpus/*"]}, "output": f"s3://{bucket}/{out}", "shards": 4,
            "clean": CLEAN, "tokenize": {"tokenizer": f"s3://{bucket}/models/tokenizer.json"},
            "storage": {"s3": {"endpoint_url": endpoint, "max_attempts": 10}},
            "executor": {"kind": "local", "workers": 2}}


def _upload(s3, demo_inputs):
    b = s3.bucket("flaky")
    s3.upload(demo_inputs / "input", b, "corpus")
    s3.client.put_object(Bucket=b, Key="models/tokenizer.json", Body=(demo_inputs / "tokenizer.json").read_bytes())
    return b


def test_flaky_store_same_outputs_and_down_store_resumes(s3, demo_inputs):
    b = _upload(s3, demo_inputs)
    ref = preproc.run(_spec(b, s3.endpoint_url, "ref"))
    proxy = s3.proxy()

    # 1. One request in 7 fails (rotating 503 SlowDown, 500, dropped connection, slow answer).
    proxy.flaky(every=7)
    r = preproc.run(_spec(b, proxy.endpoint_url, "flaky"))
    injected = dict(proxy.injected)
    proxy.flaky(0)
    assert all(n > 0 for n in injected.values()), (injected, len(proxy.requests), proxy.requests[:5])
    assert s3.tree(b, "flaky/tokens") == s3.tree(b, "ref/tokens")
    timing = ("stage_worker_time_s", "stage_span_s")
    assert {k: v for k, v in r.stats.items() if k not in timing} == {k: v for k, v in ref.stats.items() if k not in timing}
    print(f"injected faults: {injected}, requests through the proxy: {len(proxy.requests)}")

    # 2. The store goes down in the middle of a run: half the clean stage is done.
    spec = _spec(b, proxy.endpoint_url, "down")
    plan = prepare(preproc.load_spec(spec))
    for i in (0, 1):
        run_index(plan, "clean", i)
    proxy.down(True)
    try:
        preproc.run(spec)
        raise AssertionError("the run must not succeed while the store is down")
    except preproc.PreprocError as e:
        msg = str(e)
        assert "\n" not in msg and ("503" in msg or "ServiceUnavailable" in msg or "cannot" in msg), msg
    finally:
        proxy.down(False)
    done_before = set(s3.keys(b, "down/clean/_done/"))
    r = preproc.run(spec)                                 # later, the same command resumes
    assert s3.tree(b, "down/tokens") == s3.tree(b, "ref/tokens")
    assert done_before <= set(s3.keys(b, "down/clean/_done/"))
    assert r.stats["kept"] == ref.stats["kept"]
