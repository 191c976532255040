"""Benchmark scripts: run them as modules from the repository root (python3 -m tools.benchmarks.bench_decode ...)."""
