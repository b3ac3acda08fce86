"""Runner: one job and a sweep over the engine: validation, hashing, skip, resume,
worker isolation and the MLflow record."""
