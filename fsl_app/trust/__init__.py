"""Answers a person can trust: calibration, "none of these", uncertainty, explanations,
labels that look wrong."""
