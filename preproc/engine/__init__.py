"""The run: plan, stage registry, runner, finalize, incremental refresh."""
