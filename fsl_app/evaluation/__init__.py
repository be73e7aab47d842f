"""Honest numbers: N-way K-shot episodes, a project's held-out accuracy, metrics and folds."""
