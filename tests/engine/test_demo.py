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
    """The demo's numbers are fixed by its seeded corpus (the README's summary block): every
    planted copy is removed, every malformed record rejected for its own reason, every
    document accounted for, and the dataset holds exactly the kept documents and tokens."""
    result, planted = run_demo(tmp_path / "d", workers=2)
    assert (planted["documents"], planted["exact_duplicates"], planted["malformed"]) == (3000, 150, 6)
    s = result.stats
    assert (s["read"], s["kept"], s["tokens"]) == (3156, 3000, 997_177)
    assert s["filtered_total"] == 0 and s["duplicates"]["exact"] == s["duplicates_total"] == 150
    assert s["rejected"] == dict.fromkeys(["empty_text", "invalid_json", "invalid_utf8", "missing_text",
                                           "not_an_object", "text_not_string"], 1)
    assert s["read"] == s["kept"] + s["filtered_total"] + s["duplicates_total"] + s["rejected_total"]
    ds = json.loads((tmp_path / "d" / "output" / "dataset.json").read_text())
    assert (ds["documents"], ds["tokens"]) == (3000, 997_177)
    assert ds["tokenizer"]["eos_token"] == "<|endoftext|>"
