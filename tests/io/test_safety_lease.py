"""One writer per output: the lease (preproc.io.lease) on a local folder and on the moto S3
server, with real contenders (subprocesses held at a failpoint) and an injectable clock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import preproc
from preproc.io.lease import Lease, LeaseHeld, LeaseLost
from preproc.io.store import Store
from tests.conftest import ROOT, wait_for


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(Store factory, environment for subprocesses) on a local folder or an S3 prefix."""
    if request.param == "local":
        uri = str(tmp_path / "out")
        return uri, None, {}
    s3 = request.getfixturevalue("s3")
    bucket = s3.bucket()
    return f"s3://{bucket}/out", s3.storage, s3.env()


def _store(where) -> Store:
    uri, storage, _ = where
    return Store(uri, storage)


def test_a_held_lease_refuses_a_second_writer_until_released(where):
    a = Lease(_store(where), ttl_s=60, heartbeat=False).acquire()
    b = Lease(_store(where), ttl_s=60, heartbeat=False)
    with pytest.raises(LeaseHeld) as e:
        b.acquire()
    assert a.owner in str(e.value) and e.value.exit_code == 75
    a.release()
    b.acquire()
    assert b.current()[1]["owner"] == b.owner
    b.release()
    assert b.current()[1]["released"] is True


def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it(where):
    clock = Clock()
    a = Lease(_store(where), ttl_s=30, clock=clock, heartbeat=False).acquire()
    clock.t += 20
    a.renew()                               # renewing moves the expiry: still held at +40 s
    clock.t += 20
    with pytest.raises(LeaseHeld):
        Lease(_store(where), ttl_s=30, clock=clock, heartbeat=False).acquire()
    clock.t += 31                           # no renewal for longer than the TTL
    b = Lease(_store(where), ttl_s=30, clock=clock, heartbeat=False).acquire()
    with pytest.raises(LeaseLost, match="lost the lease"):
        a.renew()
    with pytest.raises(LeaseLost):
        a.check()
    a.release()                             # a lost lease's release leaves the new holder alone
    assert b.current()[1]["owner"] == b.owner and not b.current()[1]["released"]
    b.renew()
    # Superseded versions are cleaned up by the holder: one version is left.
    assert len(b._versions()) == 1


_CONTENDER = textwrap.dedent("""
    import sys
    from preproc.io.lease import Lease, LeaseHeld
    from preproc.io.store import Store
    import json
    storage = json.loads(sys.argv[2]) or None
    try:
        l = Lease(Store(sys.argv[1], storage), ttl_s=60, heartbeat=False).acquire()
    except LeaseHeld as e:
        print(e, file=sys.stderr)
        sys.exit(75)
    print(l.owner)
""")


def test_two_contenders_for_an_expired_lease_only_one_wins(where, tmp_path):
    """Both read the expired lease, both are held at the failpoint, then both try their
    compare-and-swap: exactly one wins (the old code deleted and re-created: both won)."""
    uri, storage, env = where
    store = _store(where)
    stale = json.dumps({"owner": "elsewhere:1:dead", "what": "run", "host": "elsewhere", "pid": 1,
                        "expires_s": time.time() - 5, "released": False}).encode()
    from preproc.io.lease import create_exclusive

    assert create_exclusive(store, "_lease/0000000007.json", stale)
    state = tmp_path / "fp"
    penv = {**os.environ, **env, "PYTHONPATH": str(ROOT), "PREPROC_FAILPOINTS": "point=lease_takeover,action=pause",
            "PREPROC_FAILPOINT_STATE": str(state)}
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, uri, json.dumps(storage)], env=penv,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert wait_for(lambda: state.exists() and len(list(state.glob("paused-*"))) == 2, timeout=60), \
            [p.communicate() for p in procs if p.poll() is not None]
        (state / "resume").touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 75], outs
    winner = next(o for p, o in zip(procs, outs) if p.returncode == 0)[0].strip()
    n, held = Lease(store).current()
    assert n == 8 and held["owner"] == winner


def test_a_killed_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    out = tmp_path / "out"
    code = ("from preproc.io.lease import Lease; from preproc.io.store import Store; import sys, time\n"
            f"Lease(Store({str(out)!r}), ttl_s=600).acquire(); print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(LeaseHeld, match=f"pid {p.pid}"):
        Lease(Store(str(out)), heartbeat=False).acquire()
    p.send_signal(signal.SIGKILL)
    p.wait()
    # The TTL is 600 s, but the holder's process is gone: no wait.
    lease = Lease(Store(str(out)), heartbeat=False).acquire()
    assert lease.current()[1]["owner"] == lease.owner


def test_heartbeat_renews_before_expiry(tmp_path):
    lease = Lease(Store(str(tmp_path / "o")), ttl_s=1.5).acquire()
    try:
        first = lease.version
        assert wait_for(lambda: lease.version >= first + 2, timeout=10)
        assert lease.current()[1]["owner"] == lease.owner and lease.lost is None
    finally:
        lease.release()


@pytest.mark.parametrize("ttl", ["0", "-5", "nan", "inf"])
def test_lock_ttl_must_be_a_positive_number_of_seconds(tmp_path, demo_inputs, ttl):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"input": {"paths": [str(demo_inputs / "input" / "*")]},
                                "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}))
    for cmd in ("run", "refresh"):
        p = _cli(cmd, spec, "--output", tmp_path / cmd, "--lock-ttl", ttl)
        assert p.returncode == 2, (cmd, p.stderr)
        assert "--lock-ttl" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        assert not (tmp_path / cmd).exists()
    with pytest.raises(preproc.ConfigError):
        preproc.run(str(spec), output=str(tmp_path / "lib"), lock_ttl_s=0)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "preproc", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), timeout=600)


def _demo_spec(tmp_path: Path, demo_inputs: Path, **extra) -> Path:
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"input": {"paths": [str(demo_inputs / "input" / "*")]},
                                "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")},
                                "clean": {"defaults": False}, **extra}))
    return spec


def test_a_second_run_and_a_concurrent_force_exit_75_naming_the_holder(tmp_path, demo_inputs):
    """Run A is held at the start of its tokenize stage; run B (same output) and run C
    (--force with another spec) both exit 75; A then finishes with its own statistics."""
    spec = _demo_spec(tmp_path, demo_inputs)
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps({**json.loads(spec.read_text()), "clean": {"length": {"min_chars": 999}}}))
    out = tmp_path / "out"
    state = tmp_path / "fp"
    a = subprocess.Popen([sys.executable, "-m", "preproc", "run", str(spec), "--output", str(out), "--workers", "1"],
                         env=dict(os.environ, PYTHONPATH=str(ROOT), PREPROC_FAILPOINT_STATE=str(state),
                                  PREPROC_FAILPOINTS="point=start,stage=tokenize,index=0,action=pause"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: state.exists() and any(state.glob("paused-*")), timeout=300), a.poll()
        b = _cli("run", spec, "--output", out, "--workers", "1")
        assert b.returncode == 75, b.stderr
        assert f"pid {a.pid}" in b.stderr and "held by another run" in b.stderr
        c = _cli("run", other, "--output", out, "--workers", "1", "--force")
        assert c.returncode == 75, c.stderr
        assert (out / "plan.json").exists() and (out / "clean").exists()
        (state / "resume").touch()
        stdout, stderr = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, stderr
    run_id = json.loads((out / "plan.json").read_text())["run_id"]
    assert f"run {run_id}:" in stdout
    assert json.loads((out / "stats.json").read_text())["run_id"] == run_id
    # Released: the next run resumes (nothing to do) at once.
    assert _cli("run", spec, "--output", out, "--workers", "1").returncode == 0


def test_a_marker_of_another_run_is_not_done(tmp_path, demo_inputs):
    spec = json.loads(_demo_spec(tmp_path, demo_inputs).read_text())
    out = tmp_path / "out"
    r = preproc.run(spec, output=str(out), workers=1)
    marker = out / "tokenize" / "_done" / "00000.json"
    m = json.loads(marker.read_text())
    m["run_id"] = "0123456789ab"
    m["docs"] += 1000           # another run's numbers must not end up in this run's stats
    marker.write_text(json.dumps(m))
    os.remove(out / "finalize" / "_done" / "00000.json")
    r2 = preproc.run(spec, output=str(out), workers=1)
    assert json.loads(marker.read_text())["run_id"] == r.run_id
    assert r2.stats["kept"] == r.stats["kept"]
