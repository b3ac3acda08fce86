"""Models: the backbone registry (pure data), weights sources, layers, freezing, the classifier.

Importing this package imports neither Keras nor TensorFlow; ``layers``,
``build`` and ``weights`` do, when imported.
"""
