"""Storage (local, PVC, s3:// through fsspec), readers by format, the exchange between stages, the output layout."""
