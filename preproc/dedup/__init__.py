"""Deduplication: exact, near (MinHash LSH, verification, components), drop lists."""
