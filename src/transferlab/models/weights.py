"""The one resolver of a backbone's base, whatever the weights' source.

``build(name, size, weights)`` turns ``imagenet | None | <weights file> |
<.keras file> | run:<id> | run:latest:<experiment>`` into a base with the
graph Keras builds for its ImageNet weights, then loads or copies the
weights, then lets every layer that derives state from its variables
(``finalize_state``) recompute it.

Why one graph: a Keras application constructor does not build the same graph
for ``weights="imagenet"`` as for ``None`` or a file path. EfficientNetB0-B7
insert ``Rescaling(1/sqrt(stddev))`` after their ``Normalization`` only for
``"imagenet"`` (keras/src/applications/efficientnet.py, tensorflow#49930), so
ImageNet weights passed as a file used to see inputs off by sqrt(std) per
channel. Every route therefore calls the constructor with
``weights="imagenet"`` while Keras' download function is patched to hand it
the local file (or nothing, for a random init): whatever Keras' ImageNet
path does to the graph, now or in a later version, every route gets it.

Why ``finalize_state``: ``Normalization`` computes the mean and variance it
applies from its variables when built and in ``finalize_state``; Keras'
loaders call it (``load_own_variables``, the legacy .h5 loader), but
``set_weights``, which copies a run's or a ``.keras`` file's weights, does not.

Constructor options (``alpha``, ``depth_multiplier``, ``minimalistic``; ``models/options.py``)
reach every route: each builds the graph Keras builds for them. The routes live in
``construct.py`` (``imagenet``, a file, ``None``) and ``copies.py`` (``run:``, ``.keras``);
``diagnose.py`` says which variant a file that does not fit belongs to.
"""

from __future__ import annotations

import os

from transferlab.models import options as option_table
from transferlab.models.construct import construct, finalize_states
from transferlab.models.copies import base_of, copy_weights, from_keras_file, from_run
from transferlab.models.diagnose import file_mismatch
from transferlab.models.pretrained import PretrainedError, kind

__all__ = ["build", "finalize_states", "base_of", "copy_weights", "file_mismatch"]


def build(name: str, input_size: int, weights: str | None = "imagenet",
          tracking_uri: str | None = None, include_top: bool = False, options=None):
    """Builds a Keras application (headless by default) with Keras' ImageNet graph.

    Args:
        name: registry name, e.g. ``"vgg19"``.
        input_size: square input side length in pixels (the backbone's
            ``default_size`` with ``include_top=True``).
        weights: ``"imagenet"`` (downloaded once into ``~/.keras/models``),
            ``None`` (random init), a local weights file (``.h5`` /
            ``.weights.h5``), a ``.keras`` full model (a transferlab classifier
            or a plain application), or ``run:<run id>`` /
            ``run:latest:<experiment>``: the base trained by an earlier job.
        tracking_uri: the MLflow store ``run:`` specs are looked up in; required for them only.
        include_top: with the ImageNet head (``transferlab predict``).
        options: Keras' constructor options (``{"alpha": 0.25}``, a ``backbone`` config node;
            ``models.options``): the graph is the one Keras builds for them, its ImageNet
            graph where Keras has ImageNet weights for them, else its ``weights=None`` graph.

    Returns:
        The ``keras.Model``.

    Raises:
        WeightsUnavailable: the ImageNet weights could not be fetched.
        PretrainedError: a ``run:`` spec or file cannot be used (unknown run,
            no logged model, another backbone, a file that does not fit: the message names
            the options its shapes belong to).
        options.OptionError: an option the application does not take, or
            ``weights="imagenet"`` for options Keras has no ImageNet file for.
    """
    opts = option_table.resolve(name, options)
    how = kind(weights)
    if how == "run":
        if not tracking_uri:
            raise ValueError(f"backbone.weights={weights}: building from a run needs tracking_uri")
        base = from_run(name, input_size, weights, tracking_uri, include_top, opts)
    elif how == "keras":
        base = from_keras_file(name, input_size, weights, include_top, opts)
    else:
        if how == "file" and not os.path.isfile(weights):
            raise PretrainedError(f"backbone.weights={weights!r}: no such file.")
        base = construct(name, input_size, include_top, weights, opts)
    finalize_states(base)
    return base
