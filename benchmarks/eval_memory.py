"""Evaluate N synthetic 1024x2048 images streamed (pixel + component metrics, two passes) and
print peak RSS and time.

    python benchmarks/eval_memory.py --n 1000 [--ap exact|smiyc] [--max-exact-pixels 50000000]

Images are generated on the fly from their index (never all in memory): a few rectangles of
anomaly, a void band, Eq.-5-like scores (near 0 on normal pixels, near 1 on anomalies, noise).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from m2a_pipe.evaluation.components import PROFILES, ComponentAccumulator
from m2a_pipe.evaluation.pixel import DEFAULT_MAX_EXACT_PIXELS, PixelAccumulator

HEIGHT_PX, WIDTH_PX = 1024, 2048


def synthetic(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    labels = np.zeros((HEIGHT_PX, WIDTH_PX), np.uint8)
    labels[:120] = 255
    for _ in range(i % 4):
        y, x = rng.integers(200, 900), rng.integers(0, 1900)
        labels[y:y + rng.integers(20, 120), x:x + rng.integers(20, 150)] = 1
    scores = rng.beta(1, 12, labels.shape).astype(np.float32)
    scores[labels == 1] = 1 - rng.beta(1, 4, int((labels == 1).sum())).astype(np.float32)
    return scores, labels


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    ap.add_argument("--ap", default="exact", choices=["exact", "smiyc"])
    ap.add_argument("--max-exact-pixels", type=int, default=DEFAULT_MAX_EXACT_PIXELS)
    args = ap.parse_args()
    print(f"start: peak RSS {peak_rss_mib():.0f} MiB")
    t0 = time.perf_counter()
    pixel = PixelAccumulator(args.ap, args.max_exact_pixels)
    for i in range(args.n):
        pixel.add(*synthetic(i))
    m = pixel.result()
    t1 = time.perf_counter()
    comp = ComponentAccumulator(m.best_f1_threshold, PROFILES["anomaly-track"])
    for i in range(args.n):
        comp.add(*synthetic(i))
    c = comp.result()
    t2 = time.perf_counter()
    print(f"{args.n} images {HEIGHT_PX}x{WIDTH_PX}, {pixel.n_valid_pixels:,} valid pixels, "
          f"AP convention {args.ap} ({m.method})")
    print(f"AuPRC {100 * m.auprc:.3f}  FPR95 {100 * m.fpr95:.3f}  AUROC {100 * m.auroc:.3f}  "
          f"sIoU {100 * c.siou:.2f}  PPV {100 * c.ppv:.2f}  F1* {100 * c.f1_star:.2f}")
    print(f"pixel pass {t1 - t0:.1f} s, component pass {t2 - t1:.1f} s, total {t2 - t0:.1f} s "
          f"({1000 * (t2 - t0) / args.n:.0f} ms/image incl. synthesis)")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
