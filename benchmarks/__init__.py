"""Benchmark scripts: each prints a table and writes benchmarks/results/NAME.json."""
