"""Every weights route against Keras' own ImageNet path, on the same weights.

    .venv/bin/python benchmarks/weights_routes.py                       # efficientnetb0 @64 px
    .venv/bin/python benchmarks/weights_routes.py --backbone mobilenetv3small --size 32

One weights file is written (random init with non-trivial BatchNorm and
Normalization statistics, tests/weights_helpers.py); Keras' ImageNet path is
served that file by patching its download function (the reference). Then the
same weights go through transferlab's routes: the file (``backbone.weights=
<file>``), a ``.keras`` copy of the reference, a ``run:<id>`` whose logged
classifier holds the reference as its base, and ``transferlab predict
--weights`` (include_top=True, at the backbone's default size). Prints, per
route, the max abs and relative (/ max |reference|) difference of the first
convolution's output and of the model's output, and the per-channel ratio of
the first convolution's input (reference / route; 1 = same input scale).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import ROOT, load, table

sys.path.insert(0, str(ROOT / "tests"))


def first_conv(model):
    import keras

    conv = next(l for l in model.layers if isinstance(l, keras.layers.Conv2D))
    return conv, keras.Model(model.input, [conv.input, conv.output])


def compare(ref, got, x) -> list:
    import numpy as np

    import weights_helpers as H

    _, r = first_conv(ref)
    _, g = first_conv(got)
    (ri, ro), (gi, go) = [[np.asarray(t, np.float64) for t in m(x, training=False)] for m in (r, g)]
    ratio = [float(np.median(ri[..., c][np.abs(gi[..., c]) > 1e-3] / gi[..., c][np.abs(gi[..., c]) > 1e-3]))
             for c in range(ri.shape[-1])]
    d = np.max(np.abs(ro - go))
    out_abs, out_rel = H.max_diff(ref, got, x)
    return [f"{d:.3g}", f"{d / np.max(np.abs(ro)):.3g}", f"{out_abs:.3g}", f"{out_rel:.3g}",
            " ".join(f"{v:.4f}" for v in ratio)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnetb0")
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import weights_helpers as H
    from transferlab import predict
    from transferlab.models import registry, weights

    name, size = args.backbone, args.size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x = H.batch(name, size)
        path = H.write_weights(name, size, tmp / "src.weights.h5")
        ref = H.keras_imagenet(name, size, path)
        rows.append(["file (.weights.h5)", *compare(ref, weights.build(name, size, path), x)])
        legacy = H.write_weights(name, size, tmp / "src.h5", legacy=True)
        rows.append(["file (legacy .h5)", *compare(H.keras_imagenet(name, size, legacy),
                                                   weights.build(name, size, legacy), x)])
        ref.save(tmp / "src.keras")
        rows.append([".keras copy", *compare(ref, weights.build(name, size, str(tmp / "src.keras")), x)])
        uri = f"sqlite:///{tmp}/mlflow.db"
        run_id = H.log_classifier(ref, name, uri)
        rows.append(["run:<id> copy", *compare(ref, weights.build(name, size, f"run:{run_id}", uri), x)])
        full = registry.spec(name).default_size
        top = H.write_weights(name, full, tmp / "top.weights.h5", include_top=True)
        ref_top = H.keras_imagenet(name, full, top, include_top=True)
        got_top = predict.from_imagenet(name, top).model
        rows.append([f"predict --weights (top, {full}px)", *compare(ref_top, got_top, H.batch(name, full))])
    print(f"{name} @{size}px vs Keras' ImageNet path on the same weights ({load()})")
    print(table(["route", "1st conv max abs", "1st conv rel", "output max abs", "output rel",
                 "1st conv input ratio per channel"], rows))


if __name__ == "__main__":
    main()
