"""Benchmarks run from the command line (`vllm bench serve`)."""
