"""Benchmark of the backup engine against restic and borg (see docs/benchmarks.md)."""
