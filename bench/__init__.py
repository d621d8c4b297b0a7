"""Benchmarks. Each module runs for real on throwaway infrastructure and prints figures; none asserts."""
