"""Benchmarks and evaluation helpers (WER normalisation, streaming benchmark)."""
