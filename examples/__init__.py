"""Runnable examples of the extension points (docs/extending.md), one script each; run them from
the repository root as ``python -m examples.NAME``. The package makes them importable there (the
tests and the conformance suite import `examples.gradient_tracking`)."""
