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
    # One run through the proxy, in three acts: half the clean stage is done on a flaky
    # store, the store goes down and the run stops, and the same command resumes it on the
    # flaky store to the end.
    spec = _spec(b, proxy.endpoint_url, "flaky")

    # 1. One request in 7 fails (rotating 503 SlowDown, 500, dropped connection, slow answer).
    proxy.flaky(every=7)
    plan = prepare(preproc.load_spec(spec))
    for i in (0, 1):
        run_index(plan, "clean", i)
    proxy.flaky(0)

    # 2. The store goes down in the middle of the run: the run stops with one clear line.
    #    (Fewer attempts than the run's: the retry count is not what this checks, and the
    #    workers' tokenizer preload would wait out 10 backoffs; storage is not in the run id.)
    proxy.down(True)
    try:
        preproc.run(dict(spec, storage={"s3": {"endpoint_url": proxy.endpoint_url, "max_attempts": 2}}))
        raise AssertionError("the run must not succeed while the store is down")
    except preproc.PreprocError as e:
        msg = str(e)
        assert "\n" not in msg and ("503" in msg or "ServiceUnavailable" in msg or "cannot" in msg), msg
    finally:
        proxy.down(False)
    done_before = set(s3.keys(b, "flaky/clean/_done/"))
    assert len(done_before) == 2, done_before

    # 3. Later, the same command resumes from the markers, the store still flaky: every
    #    fault kind is met, and the outputs and stats equal the undisturbed run's.
    proxy.flaky(every=7)
    r = preproc.run(spec)
    injected = dict(proxy.injected)
    proxy.flaky(0)
    assert all(n > 0 for n in injected.values()), (injected, len(proxy.requests), proxy.requests[:5])
    assert s3.tree(b, "flaky/tokens") == s3.tree(b, "ref/tokens")
    assert done_before <= set(s3.keys(b, "flaky/clean/_done/"))
    timing = ("stage_worker_time_s", "stage_span_s")
    assert {k: v for k, v in r.stats.items() if k not in timing} == {k: v for k, v in ref.stats.items() if k not in timing}
    print(f"injected faults: {injected}, requests through the proxy: {len(proxy.requests)}")
