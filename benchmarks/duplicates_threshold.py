"""Near-duplicate threshold: phash Hamming distances of edited copies vs distinct images.

For each generated set (the project's synthetic shapes at 64 and 224 px, the noise images
of the leakage and imbalance cases, 500x375 smooth "photo-like" images), every image is
checked as the scan checks it (``imagecheck.check``: JPEGs hashed at their draft scale)
together with edited copies of it: JPEG re-encoded at quality 90/75/50, resized to 50% and
200%, resized + re-encoded, saved as PNG, brightened by 10 levels, cropped by 4% on each side.
Prints, per set, the distance distribution of copy pairs (original vs each edit) and the
smallest distances between distinct images (all pairs), so the threshold in
``data/duplicates.py`` (NEAR_THRESHOLD) can sit between them.

Then, on 2,000 generated 64-px shapes (``--shapes``), how many distinct pairs the hash alone
puts within the threshold and how many survive the thumbnail check (``find``), and the time of
the near search on 25,000 and 100,000 random hashes.

Usage: python benchmarks/duplicates_threshold.py [--n 60] [--shapes 2000]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from transferlab.data import duplicates, imagecheck, synthetic


def _edits(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size

    def jpeg(x, q):
        buf = io.BytesIO()
        x.convert("RGB").save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue()))

    dx, dy = max(1, w // 25), max(1, h // 25)
    return {
        "jpeg q90": jpeg(im, 90), "jpeg q75": jpeg(im, 75), "jpeg q50": jpeg(im, 50),
        "resize 50%": im.resize((max(8, w // 2), max(8, h // 2)), Image.LANCZOS),
        "resize 200%": im.resize((w * 2, h * 2), Image.BICUBIC),
        "resize 50% + q75": jpeg(im.resize((max(8, w // 2), max(8, h // 2)), Image.LANCZOS), 75),
        "png": im, "brighter +10": ImageEnhance.Brightness(im).enhance(1.08),
        "crop 4%": im.crop((dx, dy, w - dx, h - dy)),
    }


def _photo_like(rng, n: int) -> list[np.ndarray]:
    """Smooth random scenes 500x375: low-frequency noise upsampled, plus grain."""
    out = []
    for _ in range(n):
        small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        big = np.asarray(Image.fromarray(small).resize((500, 375), Image.BICUBIC), dtype=np.float64)
        out.append(np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8))
    return out


def _sets(n: int, rng) -> dict[str, list[np.ndarray]]:
    sets = {}
    for size in (64, 224):
        with tempfile.TemporaryDirectory() as tmp:
            root = synthetic.generate(Path(tmp) / "s", 8, max(3, n // 8), size, 0)
            files = sorted(p for p in Path(root).rglob("*") if p.suffix in (".png", ".jpg"))
            sets[f"synthetic shapes {size} px (8 classes)"] = [np.asarray(Image.open(p).convert("RGB"))
                                                               for p in files[:n]]
    sets["noise 40 px (leakage case)"] = [
        np.clip(rng.normal(100 + 40 * (i % 2), 50, (40, 40, 3)), 0, 255).astype(np.uint8) for i in range(n)]
    base = rng.normal(128, 30, (40, 40, 3))
    sets["noise 40 px (imbalance case)"] = [np.clip(rng.normal(128, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                                            for _ in range(n)]
    del base
    sets["smooth scenes 500x375"] = _photo_like(rng, n)
    return sets


def _hash_file(tmp: Path, name: str, im: Image.Image, fmt: str) -> int:
    p = tmp / f"{name}.{fmt.lower()}"
    im.convert("RGB").save(p, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    v = imagecheck.check(p)
    assert v.kind != imagecheck.SKIP, v
    return int(v.phash, 16), duplicates.thumbnail(str(p))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--shapes", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"phash Hamming distance (64 bits); threshold in use: {duplicates.NEAR_THRESHOLD}\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, images in _sets(args.n, rng).items():
            fmt = "JPEG" if "500x375" in name else "PNG"
            originals, per_edit, confirmed = [], {}, {}
            for i, a in enumerate(images):
                im = Image.fromarray(a)
                h0, t0 = _hash_file(tmp, f"o{i}", im, fmt)
                originals.append(h0)
                for edit, e in _edits(im).items():
                    h, t = _hash_file(tmp, f"e{i}", e, "PNG" if edit == "png" else "JPEG")
                    per_edit.setdefault(edit, []).append(bin(h0 ^ h).count("1"))
                    confirmed.setdefault(edit, []).append(duplicates.similar(t0, t))
            h = np.array(originals, dtype=np.uint64)
            d = np.bitwise_count(h[:, None] ^ h[None, :])[np.triu_indices(len(h), 1)]
            print(f"## {name}: {len(images)} images")
            for edit, ds in per_edit.items():
                ds = np.array(ds)
                found = (ds <= duplicates.NEAR_THRESHOLD) & np.array(confirmed[edit])
                print(f"  copy, {edit:17s}: median {np.median(ds):4.1f}  max {ds.max():2d}  "
                      f"<= threshold {np.mean(ds <= duplicates.NEAR_THRESHOLD):6.1%}  "
                      f"thumbnails agree {np.mean(confirmed[edit]):6.1%}  found {np.mean(found):6.1%}")
            print(f"  distinct pairs ({len(d)}): min {d.min()}  1st percentile {np.percentile(d, 1):.0f}  "
                  f"median {np.median(d):.0f}  <= threshold {np.mean(d <= duplicates.NEAR_THRESHOLD):.3%}\n")
        _shapes(tmp, args.shapes)
        _lookalikes(tmp, args.n)
    for n in (25_000, 100_000):
        h = rng.integers(0, 2**64, n, dtype=np.uint64)
        t0 = time.perf_counter()
        duplicates.near_pairs(h)
        print(f"near search, {n:,} random hashes: {time.perf_counter() - t0:.2f} s")


def _shapes(tmp: Path, n: int) -> None:
    from transferlab.data import scan

    root = synthetic.generate(tmp / "shapes", 8, n // 8, 64, 0)
    info = scan(root)
    h = np.array([int(e.phash, 16) for s in info.files.values() for e in s], dtype=np.uint64)
    t = duplicates.NEAR_THRESHOLD
    by_hash = len(duplicates.near_pairs(h, t)[0])
    t0 = time.perf_counter()
    found = duplicates.find(info)
    print(f"## {len(h)} synthetic shapes, 64 px: {by_hash} distinct pairs within {t} bits by the hash "
          f"alone; after the thumbnail check: {len(found.pairs)} ({time.perf_counter() - t0:.2f} s)\n")


def _lookalikes(tmp: Path, n: int) -> None:
    """Distinct images that share a layout: one centred shape in a fixed colour per class, on
    a random dark background, at a random size (36-64 px) - product photos on plain
    backgrounds look like this. Every pair found is a false positive."""
    from PIL import ImageDraw

    from transferlab.data import scan

    rng = np.random.default_rng(1)
    colours = {"square": (40, 200, 40), "circle": (200, 40, 40), "tri": (40, 40, 200)}
    for cls, colour in colours.items():
        (tmp / "look" / cls).mkdir(parents=True)
        for i in range(n):
            side = int(rng.integers(36, 65))
            im = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 80, 3)))
            d, m = ImageDraw.Draw(im), side // 4
            box = (m, m, side - m, side - m)
            {"square": lambda: d.rectangle(box, fill=colour), "circle": lambda: d.ellipse(box, fill=colour),
             "tri": lambda: d.polygon([(side // 2, m), (m, side - m), (side - m, side - m)], fill=colour)}[cls]()
            im.save(tmp / "look" / cls / f"{i:03d}.png")
    info = scan(tmp / "look", split=None)
    h = np.array([int(e.phash, 16) for s in info.files.values() for e in s], dtype=np.uint64)
    by_hash = len(duplicates.near_pairs(h)[0])
    found = duplicates.find(info, cache_dir="")
    print(f"## {len(h)} look-alikes (one shape per class, random background and size): {by_hash} "
          f"distinct pairs within {duplicates.NEAR_THRESHOLD} bits by the hash alone; after the "
          f"thumbnail check: {len(found.pairs)}\n")


if __name__ == "__main__":
    main()
