"""Benchmark of the evidential heads against plain models and deep ensembles (issue 6)."""
