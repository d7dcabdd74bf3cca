"""Validation: a prediction against a real run of the same workload (the engine's replay, or an external
engine's results), as error tables, CDF overlays and the iteration-level view (``servesim validate``)."""
