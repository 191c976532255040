"""Seed 004's experiment scripts (adaptive draft length, confidence early exit, one-off
scenarios) and their summary; see docs/experiments.md."""
