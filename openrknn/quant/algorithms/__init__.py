"""Calibration and weight-rounding algorithms: pure functions on histograms and weight arrays."""
