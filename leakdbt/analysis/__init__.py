"""Dynamic analyses over a running guest (taint tracking: :mod:`leakdbt.analysis.taint`)."""
