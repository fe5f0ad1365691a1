"""The on-disk names are a format: pin them (output_hashes checks whole runs)."""

from preproc.io import layout
from preproc.io.readers import InputSplit


def test_names_are_pinned():
    assert layout.part(42) == "part-00042"
    assert layout.bucket(3) == "bucket-00003.parquet"
    assert layout.marker("clean", 3) == "clean/_done/00003.json"
    assert layout.failure("tokenize", 12) == "tokenize/_failed/00012.json"
    assert layout.clean_part(0) == "clean/part-00000.parquet"
    assert layout.plan_splits(42) == "_plan/shard-00042.json"
    assert layout.rejects(7) == "rejects/part-00007.parquet"
    assert layout.removed(7) == "removed/part-00007.parquet"
    assert layout.tokens(1) == "tokens/part-00001"
    assert layout.slices("tokenize") == "tokenize/_slices.json"
    assert layout.drops_dir("exact_dedup") == "exact_dedup/drops"
    assert layout.near_root("minhash-x") == "near/minhash-x"
    assert layout.generation(2) == "generations/00002"
    assert layout.manifest(2) == "_state/manifests/dataset-v00002.json"
    assert layout.segment("exact", 1) == "_state/exact/gen-00001"
    assert layout.segment("near", 3, compact=True) == "_state/near/compact-00003"


def test_marker_index_round_trips():
    for i in (0, 7, 12345):
        assert layout.marker_index(layout.marker("s", i).rsplit("/", 1)[1]) == i
    assert layout.marker_index("notes.txt") is None and layout.marker_index(".tmp-1.json") is None


def test_split_labels():
    whole = InputSplit(uri="/d/a.jsonl", rel="a.jsonl", format="jsonl")
    rng = InputSplit(uri="/d/b.jsonl", rel="b.jsonl", format="jsonl", start=0, end=100)
    rg = InputSplit(uri="/d/c.parquet", rel="c.parquet", format="jsonl", row_groups=(2, 3, 4))
    assert layout.split_label(whole) == "/d/a.jsonl"
    assert layout.split_label(rng) == "/d/b.jsonl[0:100]"
    assert layout.split_label(rg) == "/d/c.parquet[row groups 2..4]"
    assert layout.split_label(rg, short=True) == "c.parquet[rg 2..4]"


def test_io_names_are_pinned():
    # The names io itself writes: a lease's versions, temporaries of atomic writes and lease
    # takes, and what counts as our own leftovers at the top of an output.
    assert layout.lease_version(layout.RUN_LEASE, 3) == "_lease/0000000003.json"
    assert layout.temporary("part-00001.parquet", "abc") == ".part-00001.parquet.tmp-abc"
    assert layout.lease_temporary("f" * 32) == ".lease-" + "f" * 32
    for ours in ("_lease", "_plan", layout.temporary("plan.json", "0123456789ab"), layout.lease_temporary("0" * 32)):
        assert layout.LEFTOVER.match(ours)
    for foreign in ("lease", "data.jsonl", ".x.tmp-short", "_state"):
        assert not layout.LEFTOVER.match(foreign)
    assert layout.is_marker("clean/_done/00001.json") and layout.is_marker("near/x/pairs/_failed/00002.json")
    assert not layout.is_marker("clean/part-00001.parquet")
