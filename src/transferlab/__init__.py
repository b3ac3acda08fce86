"""transferlab: sweep pretrained Keras backbones x freezing strategies x learning rates.

Python API (same overrides as the command line)::

    import transferlab
    result = transferlab.train(["backbone=mobilenetv2", "freeze=last4"])  # Result
    table = transferlab.sweep(["backbone=vgg19,resnet50", "freeze=none,last4"])  # DataFrame
"""

__all__ = ["Result", "SweepFailed", "compose", "sweep", "train"]


def __getattr__(name):  # PEP 562: `import transferlab` stays cheap (no Hydra, MLflow, TF)
    if name in __all__:
        from transferlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
