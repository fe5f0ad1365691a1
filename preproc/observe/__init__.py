"""Watching a run: progress and status, metrics, logs, the report."""
