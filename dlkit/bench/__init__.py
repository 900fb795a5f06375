"""Benchmarks: dlkit against plain Keras (and PyTorch) on the same training."""
