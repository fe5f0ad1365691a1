import pytest

from preproc.errors import ConfigError
from preproc.spec import load_spec, parse_size


def test_minimal_spec_and_overrides():
    s = load_spec({"input": {"paths": ["a/*.jsonl"]}}, output="out", workers=3, shards=5,
                  **{"clean.length.min_words": 7})
    assert s.output == "out" and s.executor.workers == 3 and s.shards == 5
    assert s.clean == {"length": {"min_words": 7}}


@pytest.mark.parametrize("raw,needle", [
    ({"input": {"paths": ["x"]}, "shard": 3}, "shard: unknown key; allowed: input, output, shards"),
    ({"input": {"paths": ["x"], "fromat": "jsonl"}}, "input.fromat: unknown key; allowed: paths, format"),
    ({"input": {"paths": ["x"], "format": "csv"}}, "input.format"),
    ({"input": {"paths": []}}, "input.paths"),
    ({}, "input: Field required"),
    ({"input": {"paths": ["x"]}, "clean": {"length": {"min_chars": "ten"}}}, "clean.length.min_chars"),
    ({"input": {"paths": ["x"]}, "clean": {"lenght": True}}, "clean.lenght: unknown step; known:"),
    ({"input": {"paths": ["x"]}, "clean": {"length": {"min_words": 9, "max_words": 3}}}, "min_words (9) is above max_words (3)"),
    ({"input": {"paths": ["x"]}, "tokenize": {"formats": ["hdf5"]}}, "tokenize.formats"),
    ({"input": {"paths": ["x"]}, "executor": {"kind": "slurm"}}, "executor.kind"),
])
def test_errors_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        load_spec(raw)
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg


def test_yaml_errors_have_a_position(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("input:\n  paths: [a\n")
    with pytest.raises(ConfigError, match=r"s.yaml: not valid YAML at line \d+"):
        load_spec(str(p))


def test_missing_spec_file():
    with pytest.raises(ConfigError, match="spec file not found"):
        load_spec("/nonexistent/spec.yaml")


def test_sizes():
    assert parse_size("256MiB") == 256 * 2**20
    assert parse_size("1GB") == 10**9
    assert parse_size(12) == 12
    with pytest.raises(ValueError):
        parse_size("lots")
