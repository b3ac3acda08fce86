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

This module names and finds the source; ``models.weights`` checks it is the same
application and copies its weights into the job's base.

Parsing (``parse``/``kind``) is TensorFlow- and MLflow-free so
``validate.validate`` can check the syntax in milliseconds; loading happens
when the job builds its model.
"""

from __future__ import annotations

import os
import re
import tempfile

from transferlab.models.registry import BACKBONES

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


def resolve(weights: str, uri: str, backbone: str | None = None, what: str | None = None,
            label: str | None = None):
    """The run a ``run:`` spec names, checked to have a logged model.

    Args:
        weights: ``run:<id>`` or ``run:latest:<experiment>``.
        uri: the tracking URI to look in (the job's).
        backbone: for ``run:latest:``, only runs of this backbone count.
        label: for ``run:latest:``, only runs of this backbone variant (``mobilenet-a0.25``,
            tag ``backbone_label``; a run without the tag built Keras' defaults) count.
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
        variant = r.data.tags.get("backbone_label", tag)
        if backbone is None or (tag == backbone and label in (None, variant)):
            return r, loc
        have.append((variant, tag))
    if not have:
        raise PretrainedError(
            f"{what}: experiment {value!r} has {len(runs)} FINISHED job "
            "run(s) but none with a logged model. Re-run the pretraining with "
            "tracking.log_model=true (and tracking.skip_finished=false if it already FINISHED).")
    have = sorted(set(have))
    variant, tag = have[0]
    fix = f"backbone={tag}" + (f" with the options of {variant}" if variant != tag else "")
    raise PretrainedError(
        f"{what}: experiment {value!r} has logged models of "
        f"{', '.join(v for v, _ in have)} only, none of {label or backbone}. Fix: {fix}, or "
        f"pretrain {label or backbone} in that experiment first.")


def load_logged_model(uri: str, location: str):
    """Downloads and loads a logged transferlab classifier (``mlflow.keras.load_model``)."""
    import mlflow

    import transferlab.models.layers  # noqa: F401  registers Preprocess, InferenceMode, RandomAffine

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp,
                                                    tracking_uri=uri)
        return mlflow.keras.load_model(local, load_model_kwargs={"compile": False})
