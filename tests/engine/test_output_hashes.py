"""scripts/output_hashes.py's normalization and comparison (the runs themselves are the
script's job: ~70 s, run before and after the issue-17 move)."""

from __future__ import annotations

import importlib.util
import json

from tests.archcheck import ROOT

_spec = importlib.util.spec_from_file_location("output_hashes", ROOT / "scripts" / "output_hashes.py")
oh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oh)


def _h(rel: str, obj) -> bytes:
    return oh.normalize(rel, json.dumps(obj).encode())


def test_json_timings_are_normalized_and_nothing_else():
    a = {"run_id": "x", "started_s": 1.5, "finished_s": 2.0, "wall_time_s": 0.5, "docs": 3,
         "stage_wall_time_s": {"clean": 1.0}, "spec": {"storage": {"s3": {"read_timeout_s": 60.0}}}}
    b = dict(a, started_s=9.0, finished_s=9.5, wall_time_s=0.25, stage_wall_time_s={"clean": 7.0})
    assert _h("clean/_done/00000.json", a) == _h("clean/_done/00000.json", b)
    for key, value in (("docs", 4), ("run_id", "y"), ("stage_wall_time_s", {"tokenize": 1.0}),
                       ("spec", {"storage": {"s3": {"read_timeout_s": 30.0}}})):
        assert _h("clean/_done/00000.json", a) != _h("clean/_done/00000.json", dict(a, **{key: value})), key
    # A timing key that appears or disappears is a difference.
    assert _h("stats.json", a) != _h("stats.json", {k: v for k, v in a.items() if k != "started_s"})


def test_prom_timings_are_normalized_and_counts_kept():
    text = ('# TYPE preproc_index_duration_seconds gauge\n'
            'preproc_index_duration_seconds{{index="0",stage="clean"}} {t}\n'
            'preproc_run_stage_documents_per_second{{stage="clean"}} {r}\n'
            'preproc_documents_read_total{{index="0",stage="clean"}} {n}\n')
    one = oh.normalize("_metrics/clean-00000.prom", text.format(t=1.2, r=99.0, n=280.0).encode())
    two = oh.normalize("_metrics/clean-00000.prom", text.format(t=3.4, r=12.5, n=280.0).encode())
    assert one == two
    assert one != oh.normalize("_metrics/clean-00000.prom", text.format(t=1.2, r=99.0, n=281.0).encode())


def test_other_files_are_hashed_byte_for_byte(tmp_path, capsys):
    out = tmp_path / "output"
    (out / "tokens").mkdir(parents=True)
    (out / "tokens" / "part-00000.bin").write_bytes(b"\x01\x02")
    (out / "report.html").write_text("<html>12.3 s</html>")
    old = {"files": oh.hash_outputs(out, "demo")}
    assert sorted(old["files"]) == ["demo/tokens/part-00000.bin"]       # report.html excluded
    (out / "tokens" / "part-00000.bin").write_bytes(b"\x01\x03")
    (out / "tokens" / "part-00001.bin").write_bytes(b"")
    new = {"files": oh.hash_outputs(out, "demo")}
    assert oh.compare(old, new) == 1
    assert capsys.readouterr().out.split("\n")[:2] == ["changed  demo/tokens/part-00000.bin",
                                                       "new      demo/tokens/part-00001.bin"]
    assert oh.compare(new, new) == 0
