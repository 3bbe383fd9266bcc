"""Benchmarks that measure selection quality (see :mod:`presel.bench.quality`)."""
