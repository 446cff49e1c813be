"""Helpers shared by the crash test, the chaos suite and the benchmarks."""
