"""PR and ROC curves as PNG, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from m2a_pipe.evaluation.pixel import Curve

SIZE_PX = 520
MARGIN_PX = 60
MAX_POINTS = 4000


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= MAX_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).astype(np.int64))
    return x[idx], y[idx]


def draw_curve(path: Path, x: np.ndarray, y: np.ndarray, *, title: str, xlabel: str, ylabel: str,
               diagonal: bool = False) -> Path:
    """Write a line plot of ``y(x)`` on the unit square to ``path`` (PNG). x, y: (T,) float."""
    img = Image.new("RGB", (SIZE_PX, SIZE_PX), "white")
    draw = ImageDraw.Draw(img)
    span = SIZE_PX - 2 * MARGIN_PX

    def to_px(u: np.ndarray, v: np.ndarray) -> list[tuple[float, float]]:
        return list(zip((MARGIN_PX + np.clip(u, 0, 1) * span).tolist(),
                        (SIZE_PX - MARGIN_PX - np.clip(v, 0, 1) * span).tolist()))

    for t in np.linspace(0, 1, 6):
        (gx, gy), = to_px(np.array([t]), np.array([t]))
        draw.line([(gx, MARGIN_PX), (gx, SIZE_PX - MARGIN_PX)], fill=(225, 225, 225))
        draw.line([(MARGIN_PX, gy), (SIZE_PX - MARGIN_PX, gy)], fill=(225, 225, 225))
        draw.text((gx - 8, SIZE_PX - MARGIN_PX + 6), f"{t:.1f}", fill="black")
        draw.text((MARGIN_PX - 28, gy - 6), f"{t:.1f}", fill="black")
    draw.rectangle([MARGIN_PX, MARGIN_PX, SIZE_PX - MARGIN_PX, SIZE_PX - MARGIN_PX], outline="black")
    if diagonal:
        draw.line(to_px(np.array([0.0, 1.0]), np.array([0.0, 1.0])), fill=(170, 170, 170))
    x, y = _thin(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    ok = np.isfinite(x) & np.isfinite(y)
    points = to_px(x[ok], y[ok])
    if len(points) >= 2:
        draw.line(points, fill=(200, 30, 30), width=2)
    draw.text((MARGIN_PX, 20), title, fill="black")
    draw.text((SIZE_PX // 2 - 20, SIZE_PX - 28), xlabel, fill="black")
    draw.text((6, MARGIN_PX - 20), ylabel, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_pr_roc(folder: Path, curve: Curve, auprc: float, auroc: float) -> list[Path]:
    """``pr.png`` (precision over recall) and ``roc.png`` (TPR over FPR) in ``folder``."""
    folder = Path(folder)
    return [
        draw_curve(folder / "pr.png", curve.tpr, curve.precision, title=f"PR curve, AuPRC {100 * auprc:.2f}",
                   xlabel="recall", ylabel="precision"),
        draw_curve(folder / "roc.png", np.concatenate([[0.0], curve.fpr]), np.concatenate([[0.0], curve.tpr]),
                   title=f"ROC curve, AUROC {100 * auroc:.2f}", xlabel="FPR", ylabel="TPR", diagonal=True),
    ]
