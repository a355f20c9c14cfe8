"""Benchmarks anyone can rerun (`make bench-...`); results go to docs/benchmarks.md."""
