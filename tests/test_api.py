import preproc


def test_public_surface_is_pinned():
    # Training code may import exactly these; changing the list is an API change.
    assert sorted(preproc.__all__) == sorted([
        "__version__", "ConfigError", "IndexedDataset", "Plan", "PreprocError", "RunResult", "Spec",
        "StageFailed", "load_spec", "plan", "run", "RefreshResult", "TokenDataset", "loader", "refresh",
        "to_hf_dataset",
    ])
    for name in preproc.__all__:
        assert hasattr(preproc, name), name
