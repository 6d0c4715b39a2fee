"""Benchmarks: capture overhead against plain diffusers, DAAM and attention-map-diffusers; latency; memory.

``python -m benchmarks`` runs them all and writes ``BENCHMARKS.md``; see :mod:`benchmarks.__main__`.
"""
