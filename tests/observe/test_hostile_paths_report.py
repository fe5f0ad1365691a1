"""Hostile names and contents outside the readers: a literal path with glob characters, a
document that tries to break out of the report's embedded JSON, read-only storage."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

import preproc
from preproc.io.listing import list_inputs
from preproc.spec.model import Spec
from tests.conftest import ROOT
from tests.observe.test_report import _parse

HOSTILE = "a page that says <!--<script> and </script><script>alert(1)</script> in its text"


def test_an_existing_path_with_brackets_is_taken_literally(tmp_path):
    (tmp_path / "data[1].jsonl").write_text('{"text": "literal"}\n')
    (tmp_path / "data1.jsonl").write_text('{"text": "what the glob would match"}\n')
    files = list_inputs(Spec.model_validate({"input": {"paths": [str(tmp_path / "data[1].jsonl")]}}))
    assert [f.rel for f in files] == ["data[1].jsonl"]
    # A pattern that names no file is still a glob.
    files = list_inputs(Spec.model_validate({"input": {"paths": [str(tmp_path / "data[0-9].jsonl")]}}))
    assert [f.rel for f in files] == ["data1.jsonl"]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, gpt2):
    d = tmp_path_factory.mktemp("hostile")
    inp = d / "in.jsonl"
    docs = [HOSTILE, f"{HOSTILE} " * 3] + [f"an ordinary document number {i} with enough words in it" for i in range(6)]
    inp.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(docs)))
    out = d / "out"
    preproc.run({"input": {"paths": [str(inp)]},
                 "clean": {"defaults": False, "normalize": True, "length": {"min_words": 14}}},
                output=str(out), tokenizer=str(gpt2), workers=1)
    return out


def test_a_document_cannot_break_out_of_the_reports_embedded_json(hostile_run):
    page = (hostile_run / "report.html").read_text()
    start = page.index("id='report-data'>") + len("id='report-data'>")
    blob = page[start:page.index("</script>", start)]
    assert "<" not in blob              # nothing in it can open a comment or end the element
    data = json.loads(blob)
    assert HOSTILE in json.dumps(data, ensure_ascii=False)   # the document is there, escaped
    assert json.loads(_parse(page).data) == data
    assert page.rstrip().endswith("</body></html>")


def _no_write_env() -> list[str]:
    """Run a child without the power to ignore file permissions (tests may run as root)."""
    if os.geteuid() != 0:
        return []
    exe = shutil.which("setpriv")
    if exe is None:
        pytest.skip("root without setpriv: cannot make storage read-only")
    return [exe, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_report_on_read_only_storage_is_one_line_and_exit_2(hostile_run, tmp_path):
    ro = tmp_path / "ro"
    shutil.copytree(hostile_run, ro)
    (ro / "report.html").unlink()
    paths = [os.path.join(root, n) for root, dirs, files in os.walk(ro) for n in [*dirs, *files]] + [str(ro)]
    for q in paths:
        os.chmod(q, os.stat(q).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.run([*_no_write_env(), sys.executable, "-m", "preproc", "report", str(ro)],
                           capture_output=True, text=True, env=env)
    finally:
        for q in paths:
            os.chmod(q, os.stat(q).st_mode | stat.S_IWUSR)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "report.html" in lines[0] and "ermission denied" in lines[0], lines
    assert not (ro / "report.html").exists()
