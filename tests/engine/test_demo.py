import json


import preproc
from preproc.demo import demo_spec, run_demo

from tests.conftest import ROOT


def test_jobs_demo_yaml_is_the_demo_spec():
    assert (ROOT / "jobs" / "demo.yaml").read_text() == demo_spec("preproc-demo")


def test_jobs_specs_validate():
    for p in sorted((ROOT / "jobs").glob("*.yaml")):
        preproc.load_spec(str(p))


def test_demo_runs_end_to_end(tmp_path):
    result, planted = run_demo(tmp_path / "d", workers=2)
    s = result.stats
    assert s["read"] == planted["documents"] + planted["exact_duplicates"] + planted["malformed"]
    assert s["rejected_total"] == planted["malformed"]
    assert s["kept"] + s["filtered_total"] + s["duplicates_total"] == planted["documents"] + planted["exact_duplicates"]
    if s["filtered_total"] == 0:
        assert s["duplicates"]["exact"] == planted["exact_duplicates"]
    else:  # a copy of a filtered document is filtered too, before dedup sees it
        assert 0 < s["duplicates"]["exact"] <= planted["exact_duplicates"]
    assert s["kept"] > planted["documents"] // 2 and s["tokens"] > 100_000
    ds = json.loads((tmp_path / "d" / "output" / "dataset.json").read_text())
    assert ds["documents"] == s["kept"] and ds["tokenizer"]["eos_token"] == "<|endoftext|>"
