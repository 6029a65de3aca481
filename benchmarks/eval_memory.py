"""Evaluate N synthetic 1024x2048 images streamed (pixel + component metrics, two passes) and
print peak RSS and time.

    python benchmarks/eval_memory.py --n 1000 [--size 2048x1024] [--ap exact|smiyc] [--max-exact-pixels 50000000]

Images are generated on the fly from their index (never all in memory): a few rectangles of
anomaly, a void band, Eq.-5-like scores (near 0 on normal pixels, near 1 on anomalies, noise).
The layout is drawn for 2048x1024 and scaled to ``--size`` (tiny runs, e.g. ``--n 8 --size
512x256``). The first line printed is the command line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

from m2a_pipe.bench.memory import peak_rss_mb
from m2a_pipe.evaluation.components import PROFILES, ComponentAccumulator
from m2a_pipe.evaluation.pixel import DEFAULT_MAX_EXACT_PIXELS, PixelAccumulator
from m2a_pipe.evaluation.report import component_rule

HEIGHT_PX, WIDTH_PX = 1024, 2048


def synthetic(i: int, height: int = HEIGHT_PX, width: int = WIDTH_PX) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels (0 normal, 1 anomaly, 255 void) of image ``i``; the layout is drawn for
    1024x2048 and scaled to (height, width)."""
    def span(lo: int, hi: int, scale: float) -> tuple[int, int]:
        lo = int(lo * scale)
        return lo, max(lo + 1, int(hi * scale))

    sy, sx = height / HEIGHT_PX, width / WIDTH_PX
    rng = np.random.default_rng(i)
    labels = np.zeros((height, width), np.uint8)
    labels[:int(120 * sy)] = 255
    for _ in range(i % 4):
        y, x = rng.integers(*span(200, 900, sy)), rng.integers(*span(0, 1900, sx))
        labels[y:y + rng.integers(*span(20, 120, sy)), x:x + rng.integers(*span(20, 150, sx))] = 1
    scores = rng.beta(1, 12, labels.shape).astype(np.float32)
    scores[labels == 1] = 1 - rng.beta(1, 4, int((labels == 1).sum())).astype(np.float32)
    return scores, labels


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"{text}: at least 16x16")
    return width, height


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    ap.add_argument("--size", type=_size, default=(WIDTH_PX, HEIGHT_PX),
                    help=f"WIDTHxHEIGHT of the images (default {WIDTH_PX}x{HEIGHT_PX})")
    ap.add_argument("--ap", default="exact", choices=["exact", "smiyc"], help="AP convention (default exact)")
    ap.add_argument("--max-exact-pixels", type=int, default=DEFAULT_MAX_EXACT_PIXELS,
                    help=f"exact AP up to this many valid pixels (default {DEFAULT_MAX_EXACT_PIXELS})")
    args = ap.parse_args()
    width, height = args.size
    print("command:", shlex.join(["python", *sys.argv]))
    print(f"start: peak RSS {peak_rss_mb():.0f} MiB")
    t0 = time.perf_counter()
    pixel = PixelAccumulator(args.ap, args.max_exact_pixels)
    for i in range(args.n):
        pixel.add(*synthetic(i, height, width))
    m = pixel.result()
    t1 = time.perf_counter()
    comparison, _ = component_rule(args.ap, m.method, given=False)  # the rule `evaluate anomaly` applies
    comp = ComponentAccumulator(m.best_f1_threshold, PROFILES["anomaly-track"], comparison=comparison)
    for i in range(args.n):
        comp.add(*synthetic(i, height, width))
    c = comp.result()
    t2 = time.perf_counter()
    print(f"{args.n} images {height}x{width}, {pixel.n_valid_pixels:,} valid pixels, "
          f"AP convention {args.ap} ({m.method})")
    print(f"AuPRC {100 * m.auprc:.3f}  FPR95 {100 * m.fpr95:.3f}  AUROC {100 * m.auroc:.3f}  "
          f"sIoU {100 * c.siou:.2f}  PPV {100 * c.ppv:.2f}  F1* {100 * c.f1_star:.2f}")
    print(f"pixel pass {t1 - t0:.1f} s, component pass {t2 - t1:.1f} s, total {t2 - t0:.1f} s "
          f"({1000 * (t2 - t0) / args.n:.0f} ms/image incl. synthesis)")
    print(f"peak RSS {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
