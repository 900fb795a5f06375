"""Tracking: the one door to MLflow (the store, runs, models) and its UI helpers."""
