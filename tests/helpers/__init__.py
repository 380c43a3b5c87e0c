"""Test helpers, one module per concern: clocks, files, polling, processes, CLI calls."""
