"""Benchmarks of xaibench against the forward passes it needs and against reference libraries."""
