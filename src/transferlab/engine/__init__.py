"""Engine: fit, evaluate, the frozen-feature cache and per-epoch backups, in plain Keras.

Nothing here imports MLflow: the runner hands its logging in as Keras callbacks.
"""
