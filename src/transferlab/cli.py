"""The ``transferlab`` command line: ``run``, ``report``, ``predict``, ``bench`` and ``export``.

``transferlab run [-m] key=value ...`` is ``python run.py [-m] key=value ...``
(every Hydra flag included), for an installed package with no checkout.
Kept free of TensorFlow imports: each subcommand imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="export a comparison report (HTML, Markdown, CSV) of MLflow runs",
        description="Build report.html, report.md and leaderboard.csv for a selection of "
                    "MLflow runs. --experiment, --sweep and --filter combine (AND); --runs "
                    "stands alone (a sweep's parent run id stands for its jobs).")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                        "project's store sqlite:///$TRANSFERLAB_ROOT/mlruns/mlflow.db, the "
                        "working directory's without it)")
    p.add_argument("--experiment", metavar="NAME", help="all runs of this experiment")
    p.add_argument("--sweep", metavar="ID", help="the runs tagged sweep_id=ID")
    p.add_argument("--filter", metavar="F",
                   help="MLflow search filter, e.g. "
                        "\"params.lr = '1e-05' and tags.backbone = 'vgg19'\"")
    p.add_argument("--runs", nargs="+", metavar="ID", help="explicit run ids")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--rows", metavar="KEY", help="matrix rows (default: backbone)")
    p.add_argument("--cols", metavar="KEY", help="matrix columns (default: freeze)")
    p.add_argument("--ui-url", metavar="URL",
                   help="MLflow UI address, e.g. http://127.0.0.1:5000: run ids become links")
    p.add_argument("--metric", metavar="M", default=None,
                   help="validation metric that ranks runs and picks the configuration whose "
                        "test score is the estimate: val_acc (default), val_balanced_acc, "
                        "val_loss")
    p.add_argument("--baseline", metavar="KEY=VALUE", action="append", default=[],
                   help="baseline value of a swept key for the comparisons, e.g. lr=1e-4 "
                        "(repeatable; default: freeze=all, else the best by --metric)")
    p.add_argument("--dataset", metavar="NAME_OR_ID",
                   help="where the runs span several data sets: the one to report (folder "
                        "name or dataset_id prefix; default: the newest run's)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not (args.experiment or args.sweep or args.filter or args.runs):
        parser.error("report: select runs with --experiment, --sweep, --filter or --runs")
    if args.runs and (args.experiment or args.sweep or args.filter):
        parser.error("report: --runs cannot be combined with --experiment/--sweep/--filter")
    bad = [b for b in args.baseline if "=" not in b or not b.split("=", 1)[0].strip()]
    if bad:
        parser.error(f"report: --baseline {bad[0]!r}: expected KEY=VALUE, e.g. --baseline lr=1e-4")
    baselines = dict(b.split("=", 1) for b in args.baseline)
    from transferlab.report import ReportError, write_report

    try:
        paths = write_report(args.tracking_uri, args.out, experiment=args.experiment,
                             sweep_id=args.sweep, filter_string=args.filter, run_ids=args.runs,
                             rows=args.rows, cols=args.cols, ui_url=args.ui_url,
                             metric=args.metric, baselines=baselines, dataset=args.dataset)
    except (ReportError, ValueError) as exc:
        print(f"transferlab report: error: {exc}", file=sys.stderr)
        return 1
    print(f"Markdown: {paths['md']}")
    print(f"CSV:      {paths['csv']}")
    print(f"Report:   {paths['html']}")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify images with a trained run's model or an ImageNet head",
        description="Classify image files: with the model a job logged (--run; the job "
                    "needs tracking.log_model=true; class names from its classes.json), with "
                    "a model `transferlab export` wrote (--model), or "
                    "with a Keras application's ImageNet head (--backbone; 1000 ImageNet "
                    "classes). Prints one line per image: the top class and its probability, "
                    "then the top-K list. Unreadable images are reported and skipped (exit 1).")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI for --run and --weights run:<id> (default: "
                        "$MLFLOW_TRACKING_URI, else the "
                        "project's store sqlite:///$TRANSFERLAB_ROOT/mlruns/mlflow.db, the "
                        "working directory's without it)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="ID",
                       help="MLflow run id of a job logged with tracking.log_model=true, or "
                            "latest:<experiment> (its newest FINISHED job run with a model)")
    which.add_argument("--model", metavar="PATH",
                       help="a model written by `transferlab export`: its --out folder, the "
                            ".tflite / .onnx file or the SavedModel folder (classes.json beside it)")
    which.add_argument("--backbone", metavar="NAME",
                       help="a Keras application (vgg19, resnet50, mobilenetv3small, ...) with "
                            "its ImageNet head")
    p.add_argument("--weights", metavar="FILE|run:ID",
                   help="with --backbone: a local weights file of the model WITH its top "
                        "(include_top=True), a .keras copy of it, or run:<id> (a run that "
                        "logged it); default: the ImageNet weights, downloaded once into "
                        "~/.keras/models")
    _add_options(p, "with --backbone: ")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="with --backbone: input side in pixels (default: the size a Keras "
                        "ImageNet file's name states, e.g. 128 for mobilenet_2_5_128_tf.h5, "
                        "else the backbone's own)")
    p.add_argument("--top", type=int, metavar="K",
                   help="how many classes to list per image (default: 1 for two classes, else 5)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.set_defaults(func=_predict)


def _add_options(p, prefix: str) -> None:
    """Keras' constructor options as flags (models/options.py; None: Keras' default)."""
    p.add_argument("--alpha", type=float, metavar="A",
                   help=f"{prefix}width multiplier of MobileNet, MobileNetV2, MobileNetV3Small/Large "
                        "(Keras' alpha; default 1.0)")
    p.add_argument("--depth-multiplier", type=int, metavar="D",
                   help=f"{prefix}MobileNet's depth_multiplier (default 1)")
    p.add_argument("--minimalistic", action="store_true", default=None,
                   help=f"{prefix}MobileNetV3Small/Large's minimalistic variant")


def _options(args) -> dict:
    return {k: v for k, v in (("alpha", args.alpha), ("depth_multiplier", args.depth_multiplier),
                              ("minimalistic", args.minimalistic)) if v is not None}


def _predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.weights and not args.backbone:
        parser.error("predict: --weights goes with --backbone (a run's model has its own weights)")
    if (_options(args) or args.image_size) and not args.backbone:
        parser.error("predict: --alpha, --depth-multiplier, --minimalistic and --image-size go "
                     "with --backbone (a run's or an exported model has its own)")
    if args.top is not None and args.top < 1:
        parser.error(f"predict: --top must be >= 1, got {args.top}")
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from transferlab import predict

    try:
        if args.run:
            from transferlab.report import ReportError
            from transferlab.report.build import resolve_tracking_uri

            try:
                uri = resolve_tracking_uri(args.tracking_uri)
            except ReportError as e:
                raise predict.PredictError(str(e)) from None
            predictor = predict.from_run(uri, args.run)
        elif args.model:
            predictor = predict.from_export(args.model)
        else:
            uri = None
            if args.weights and args.weights.startswith("run:"):
                from transferlab.report import ReportError
                from transferlab.report.build import resolve_tracking_uri

                try:
                    uri = resolve_tracking_uri(args.tracking_uri)
                except ReportError as e:
                    raise predict.PredictError(str(e)) from None
            import contextlib

            with contextlib.redirect_stdout(sys.stderr):  # build notes: stdout holds the results
                predictor = predict.from_imagenet(args.backbone, args.weights, args.image_size,
                                                  _options(args), uri)
    except predict.PredictError as exc:
        print(f"transferlab predict: error: {exc}", file=sys.stderr)
        return 1
    for note in predictor.notes:
        print(f"[transferlab] {note}", file=sys.stderr)
    return predict.run(predictor, args.images, args.top, sys.stdout, sys.stderr)


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="the Keras applications table measured on this machine",
        description="Builds each backbone as Keras' table counts it (include_top=True, 1000 "
                    "classes, weights=None: nothing downloaded) and measures Size (MB), "
                    "Parameters, Depth (layers with parameters), Time (ms) per inference step "
                    "(GPU when TensorFlow sees one, else CPU) and images/s, beside Keras' "
                    "published figures and the ratio to them. Keras' method: warm-up, then the "
                    "mean of 10 repetitions of 30 batches of 32 images. Writes bench.csv and "
                    "bench.md under --out.")
    p.add_argument("--backbones", required=True, metavar="A,B|lecture|all",
                   help="comma-separated registry names (vgg19,resnet50,mobilenetv2), 'lecture' "
                        "(the lecture's 17 rows) or 'all' (the whole registry, with a progress bar)")
    p.add_argument("--batch", type=int, default=32, help="images per inference step (default 32)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="input side in pixels for every backbone (default: each one's own; "
                        "VGG's parameters then differ from Keras' table)")
    _add_options(p, "for the backbones that take it: ")
    p.add_argument("--batches", type=int, default=30, metavar="N",
                   help="timed steps per repetition (default 30, as Keras)")
    p.add_argument("--repeats", type=int, default=10, metavar="N",
                   help="repetitions (default 10, as Keras; fewer for speed)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed steps first (default 1)")
    p.add_argument("--out", default="bench", metavar="DIR", help="output folder (default ./bench)")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from transferlab import bench

    try:
        return bench.main(args)
    except bench.BenchError as exc:
        print(f"transferlab bench: error: {exc}", file=sys.stderr)
        return 1


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export a run's trained classifier (SavedModel, TFLite, ONNX) and check it",
        description="Writes the model a job logged (tracking.log_model=true) as a SavedModel, "
                    "TFLite or ONNX model under --out (with classes.json and export.json), then "
                    "checks it on the run's test split: its accuracy beside the run's test_acc, "
                    "agreement with the Keras model (float formats: same predictions, "
                    "probabilities within 1e-4, else exit 1), size and latency; all logged on "
                    "the run (metrics export.<format>.*, artifacts export/<format>/).")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                        "project's store sqlite:///$TRANSFERLAB_ROOT/mlruns/mlflow.db, the "
                        "working directory's without it)")
    p.add_argument("--run", required=True, metavar="ID",
                   help="MLflow run id of a job logged with tracking.log_model=true, or "
                        "latest:<experiment>")
    p.add_argument("--format", required=True, choices=["saved_model", "tflite", "onnx"])
    p.add_argument("--quantize", choices=["float16", "int8"],
                   help="with --format tflite: float16 weights, or int8 ops calibrated on the "
                        "run's training images (the accuracy drop is reported)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batches", type=int, default=10, metavar="N",
                   help="latency: timed steps per repetition (default 10)")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="latency: repetitions (default 3)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.quantize and args.format != "tflite":
        parser.error(f"export: --quantize {args.quantize} goes with --format tflite")
    if args.batches < 1 or args.repeats < 1:
        parser.error("export: --batches and --repeats must be >= 1")
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from transferlab import export
    from transferlab.data import DataError
    from transferlab.report import ReportError
    from transferlab.report.build import resolve_tracking_uri

    try:
        return export.main(args, resolve_tracking_uri(args.tracking_uri))
    except (export.ExportError, DataError, ReportError) as exc:
        print(f"transferlab export: error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferlab",
        description="transferlab: compare pretrained Keras backbones x freezing strategies.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("run", help="train one job or, with -m, a sweep (Hydra: transferlab run --help)",
                   add_help=False)
    _add_report(sub)
    _add_predict(sub)
    _add_bench(sub)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``transferlab`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # Hydra parses the rest itself: -m, -c job, -sc install=bash, ...
        from transferlab.app import main as hydra_app

        hydra_app(argv[1:], prog="transferlab run")
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args, parser)


if __name__ == "__main__":
    sys.exit(main())
