"""Benchmarks that report ratios measured in one run (`hearth bench ...`)."""
