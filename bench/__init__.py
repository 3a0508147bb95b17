"""Benchmarks and evaluation helpers (WER normalisation, streaming benchmark)."""

from server.cpu import limit_helper_threads

# Measure what the server does: the same thread defaults, set before numpy loads.
limit_helper_threads()
