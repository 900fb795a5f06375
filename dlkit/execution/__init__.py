"""Execution: a training inside an MLflow run, and where children train (process, pool, Ray)."""
