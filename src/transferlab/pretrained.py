"""Backbone weights from an earlier job: pretrain on your own domain, then transfer.

``backbone.weights`` accepts, besides ``imagenet``, ``null`` and a Keras
weights file (``.h5`` / ``.weights.h5``, handed to the application's
constructor):

- ``run:<run id>``: the model an earlier job logged with
  ``tracking.log_model=true`` (MLflow model ``model`` of that run, in the
  job's own tracking store);
- ``run:latest:<experiment>``: the newest FINISHED job run of that MLflow
  experiment that logged a model and trained the same backbone (so a preset
  can name it, e.g. ``experiments/pretrain_transfer.yaml``);
- ``<file>.keras``: a full model saved by Keras, either a transferlab
  classifier (its ``base`` layer) or a plain Keras application.

The source base is checked to be the same application (its Keras model name,
then every weight shape); the job's base is then built with ``weights=None``
at the job's input size and gets the source's weights (convolution weights
do not depend on the input size), BatchNorm statistics included.

Parsing (``parse``/``kind``) is TensorFlow- and MLflow-free so
``config.validate`` can check the syntax in milliseconds; loading happens
when the job builds its model.
"""

from __future__ import annotations

import os
import re
import tempfile

from transferlab.backbones import BACKBONES, spec

RUN_PREFIX = "run:"
LATEST = "latest:"
MODEL_NAME = "model"  # the name job._log_model logs the classifier under
_RUN_ID = re.compile(r"^[0-9A-Za-z_-]+$")


class PretrainedError(ValueError):
    """Weights from an earlier run or a file cannot be used; the message says why and the fix."""


# -- parsing (no TensorFlow, no MLflow) ------------------------------------------------------


def kind(weights: str | None) -> str:
    """What a ``backbone.weights`` value is.

    Returns:
        ``"none"`` (random init), ``"imagenet"``, ``"run"`` (``run:...``),
        ``"keras"`` (a ``.keras`` full-model file) or ``"file"`` (a weights
        file for the Keras constructor).
    """
    if weights is None:
        return "none"
    if weights == "imagenet":
        return "imagenet"
    if str(weights).startswith(RUN_PREFIX):
        return "run"
    if str(weights).lower().endswith(".keras"):
        return "keras"
    return "file"


def parse(weights: str) -> tuple[str, str]:
    """Splits a ``run:`` spec.

    Returns:
        ``("id", <run id>)`` or ``("latest", <experiment name>)``.

    Raises:
        PretrainedError: the spec is malformed (the message shows both forms).
    """
    rest = str(weights)[len(RUN_PREFIX):] if str(weights).startswith(RUN_PREFIX) else None
    forms = ("backbone.weights=run:<MLflow run id> (a job run with tracking.log_model=true) "
             "or backbone.weights=run:latest:<MLflow experiment name>")
    if rest is None:
        raise PretrainedError(f"backbone.weights={weights!r} is not a run: spec. Use {forms}.")
    if rest.startswith(LATEST):
        exp = rest[len(LATEST):].strip()
        if not exp:
            raise PretrainedError(f"backbone.weights={weights!r} names no experiment. Use {forms}.")
        return "latest", exp
    if not _RUN_ID.match(rest):
        raise PretrainedError(f"backbone.weights={weights!r}: {rest!r} is not an MLflow run id. "
                              f"Use {forms}.")
    return "id", rest


def registry_name(keras_name: str) -> str | None:
    """The registry name of a Keras application model name, or None.

    ``MobileNetV3Small`` -> ``mobilenetv3small``, ``mobilenetv2_1.00_224`` ->
    ``mobilenetv2``, ``efficientnetv2-b0`` -> ``efficientnetv2b0``,
    ``inception_v3`` -> ``inceptionv3``, ``convnext_tiny`` -> ``convnexttiny``.
    """
    n = re.sub(r"_\d+(?:\.\d+)?_\d+$", "", keras_name.lower())  # mobilenet(v2)'s alpha_rows
    n = re.sub(r"[^a-z0-9]", "", n)
    return n if n in BACKBONES else None


# -- MLflow --------------------------------------------------------------------------------


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _all_pages(fetch) -> list:
    out, token = [], None
    while True:
        page = fetch(token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _logged_models(c, experiment_id: str, run_id: str | None = None) -> dict[str, str]:
    """run id -> artifact URI of its READY MLflow 3 logged model ``model`` (the newest)."""
    from mlflow.entities import LoggedModelStatus

    f = f"name = '{MODEL_NAME}'" + (f" AND source_run_id = '{run_id}'" if run_id else "")
    models = _all_pages(lambda token: c.search_logged_models(
        [experiment_id], filter_string=f, page_token=token,
        order_by=[{"field_name": "creation_time", "ascending": True}]))
    return {m.source_run_id: m.artifact_location for m in models
            if m.status == LoggedModelStatus.READY and m.source_run_id}  # newest wins


def _legacy_model(c, run) -> str | None:
    """A ``model/`` folder among the run's own artifacts (as MLflow 2 logged models)."""
    try:
        names = {f.path for f in c.list_artifacts(run.info.run_id, MODEL_NAME)}
    except Exception:  # no such folder, or an artifact store that cannot list
        return None
    if f"{MODEL_NAME}/MLmodel" in names:
        return f"{run.info.artifact_uri.rstrip('/')}/{MODEL_NAME}"
    return None


def model_location(c, run) -> str | None:
    """Artifact URI of the run's logged model ``model``, or None if it has none."""
    return (_logged_models(c, run.info.experiment_id, run.info.run_id).get(run.info.run_id)
            or _legacy_model(c, run))


def _no_model(run_id: str, what: str) -> PretrainedError:
    return PretrainedError(
        f"{what}: run {run_id} has no logged model (MLflow model '{MODEL_NAME}'). Re-run that "
        "job with tracking.log_model=true (add tracking.skip_finished=false if it already "
        "FINISHED), then use its new run id.")


def get_run(uri: str, run_id: str, what: str):
    """The MLflow run ``run_id``; PretrainedError naming ``what`` and the store if unknown."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(uri).get_run(run_id)
    except MlflowException as e:
        raise PretrainedError(
            f"{what}: no MLflow run {run_id} in {uri} ({str(e).splitlines()[0][:200]}). "
            "Fix: copy the run id from the MLflow UI or the job's '-> MLflow run <id>' line, "
            "and use the same store (tracking.uri / --tracking-uri) the run was logged to."
        ) from None


def resolve(weights: str, uri: str, backbone: str | None = None, what: str | None = None):
    """The run a ``run:`` spec names, checked to have a logged model.

    Args:
        weights: ``run:<id>`` or ``run:latest:<experiment>``.
        uri: the tracking URI to look in (the job's).
        backbone: for ``run:latest:``, only runs of this backbone count.
        what: how messages name the spec (default ``backbone.weights=<spec>``).

    Returns:
        ``(run, model artifact URI)``.

    Raises:
        PretrainedError: unknown run or experiment, no finished job run with a
            model, a run without a logged model.
    """
    how, value = parse(weights)
    what = what or f"backbone.weights={weights}"
    c = _client(uri)
    if how == "id":
        run = get_run(uri, value, what)
        loc = model_location(c, run)
        if loc is None:
            raise _no_model(value, what)
        return run, loc
    exp = c.get_experiment_by_name(value)
    if exp is None:
        names = sorted(e.name for e in c.search_experiments())
        raise PretrainedError(
            f"{what}: no MLflow experiment {value!r} in {uri} "
            f"(experiments there: {', '.join(names) or 'none'}). Fix: run the pretraining "
            f"first (with tracking.experiment={value} tracking.log_model=true), or name an "
            "existing experiment.")
    runs = _all_pages(lambda token: c.search_runs(
        [exp.experiment_id], order_by=["attributes.start_time DESC"], page_token=token,
        filter_string="attributes.status = 'FINISHED' AND tags.`transferlab.role` = 'job'"))
    logged = _logged_models(c, exp.experiment_id)  # one query, not one per run
    have: list[str] = []  # backbones of the runs with a model
    for r in runs:  # newest first
        loc = logged.get(r.info.run_id) or _legacy_model(c, r)
        if loc is None:
            continue
        tag = r.data.tags.get("backbone", "?")
        if backbone is None or tag == backbone:
            return r, loc
        have.append(tag)
    if not have:
        raise PretrainedError(
            f"{what}: experiment {value!r} has {len(runs)} FINISHED job "
            "run(s) but none with a logged model. Re-run the pretraining with "
            "tracking.log_model=true (and tracking.skip_finished=false if it already FINISHED).")
    have = sorted(set(have))
    raise PretrainedError(
        f"{what}: experiment {value!r} has logged models of "
        f"{', '.join(have)} only, none of {backbone}. Fix: backbone={have[0]}, or "
        f"pretrain {backbone} in that experiment first.")


def load_logged_model(uri: str, location: str):
    """Downloads and loads a logged transferlab classifier (``mlflow.keras.load_model``)."""
    import mlflow

    import transferlab.model  # noqa: F401  registers Preprocess and InferenceMode

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp,
                                                    tracking_uri=uri)
        return mlflow.keras.load_model(local, load_model_kwargs={"compile": False})


# -- the backbone ----------------------------------------------------------------------------


def base_of(model):
    """The Keras application inside a transferlab classifier (its ``base`` layer), or
    ``model`` itself when it is a plain application."""
    try:
        layer = model.get_layer("base")
    except ValueError:
        return model
    return getattr(layer, "base", layer)


def _check_same(src, name: str, origin: str) -> None:
    got = registry_name(src.name)
    if got != name:
        what = f"a {got} backbone" if got else f"a Keras model named {src.name!r}"
        fix = f"backbone={got}" if got else "a model saved from that backbone"
        raise PretrainedError(
            f"{origin} holds {what}, not {name}. Weights only carry over between the same "
            f"backbone. Fix: {fix}, or weights from a {name} run/file.")


def copy_weights(src, dst, name: str, origin: str) -> int:
    """Copies ``src``'s weights into ``dst`` layer by layer (layers with weights, in order).

    Extra trailing layers of ``src`` (an ImageNet top of a plain application
    saved with ``include_top=True``) are ignored.

    Returns:
        The number of layers copied.

    Raises:
        PretrainedError: a layer's weight shapes differ.
    """
    src_layers = [l for l in src.layers if l.weights]
    dst_layers = [l for l in dst.layers if l.weights]
    problem = None
    if len(src_layers) < len(dst_layers):
        problem = f"it has {len(src_layers)} layers with weights, {name} needs {len(dst_layers)}"
    else:
        for s, d in zip(src_layers, dst_layers):
            ss = [tuple(w.shape) for w in s.weights]
            ds = [tuple(w.shape) for w in d.weights]
            if ss != ds:
                problem = f"layer {s.name!r} has weights of shapes {ss}, {name}'s {d.name!r} needs {ds}"
                break
    if problem:
        raise PretrainedError(f"{origin} does not fit {name}: {problem}. Fix: weights saved "
                              f"from a {name} base (same Keras application and options).")
    for s, d in zip(src_layers, dst_layers):
        d.set_weights(s.get_weights())
    return len(dst_layers)


def _transfer(src, name: str, input_size: int, origin: str):
    from transferlab import backbones

    _check_same(src, name, origin)
    dst = backbones.build(name, input_size, None)
    n = copy_weights(src, dst, name, origin)
    print(f"[transferlab] {name} @{input_size}px: weights of {n} layers from {origin}")
    return dst


def from_run(name: str, input_size: int, weights: str, tracking_uri: str):
    """The job's base with the weights of the run a ``run:`` spec names."""
    run, loc = resolve(weights, tracking_uri, backbone=name)
    run_id = run.info.run_id
    origin = f"run {run_id}" + (f" ({weights})" if parse(weights)[0] == "latest" else "")
    tagged = run.data.tags.get("backbone")
    if tagged and tagged != name:  # fail before downloading anything
        raise PretrainedError(
            f"backbone.weights={weights}: {origin} trained {tagged}, this job uses {name}. "
            f"Weights only carry over between the same backbone. Fix: backbone={tagged}, or "
            f"a run that trained {name}.")
    model = load_logged_model(tracking_uri, loc)
    return _transfer(base_of(model), name, input_size, origin)


def from_keras_file(name: str, input_size: int, path: str):
    """The job's base with the weights of a ``.keras`` full model (classifier or application)."""
    import keras

    import transferlab.model  # noqa: F401  custom layers of a saved classifier

    if not os.path.isfile(path):
        raise PretrainedError(f"backbone.weights={path!r}: no such file.")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise PretrainedError(
            f"backbone.weights={path!r} cannot be loaded as a Keras model ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}). A .keras file must be a full "
            "model saved with model.save('x.keras'); for weights only use a .weights.h5 file."
        ) from e
    return _transfer(base_of(model), name, input_size, f"file {path}")


def _one_line(err: Exception, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def file_mismatch(name: str, path: str, err: Exception, include_top: bool = False) -> PretrainedError:
    """The error for a weights file that does not fit the backbone (Keras' ValueError)."""
    s = spec(name)
    top = "with its ImageNet top (include_top=True)" if include_top else "without its top (include_top=False)"
    fix = (f"Fix: a file saved from keras.applications.{s.constructor}(include_top={include_top}, "
           "...) with .save_weights('x.weights.h5') (or a Keras .h5 weights file of that model")
    fix += (")." if include_top else
            "; for a classifier saved by Keras use its .keras file), backbone.weights=imagenet|null, "
            "or backbone.weights=run:<id> for a backbone trained by an earlier job.")
    return PretrainedError(f"Weights file {path} does not fit {name} ({s.constructor} {top}): "
                           f"{_one_line(err)}. {fix}")
