"""Benchmarks of each pipeline stage as a ratio to what this machine can do, measured in the same run."""
