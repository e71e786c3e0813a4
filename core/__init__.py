"""Everything the commands share: resolution, specs, the registry, verdicts, and the engine."""
