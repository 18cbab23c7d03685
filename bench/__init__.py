"""Benchmarks: each script prints its figures and the peer it is compared with, in one run."""
