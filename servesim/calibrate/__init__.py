"""Calibration: time the engine's operators on a GPU over a shape grid, fit the whole-step terms on engine
iterations, and write a :mod:`servesim.hwmodels.profile` that the calibrated cost model reads."""
