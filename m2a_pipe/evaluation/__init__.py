"""Benchmark evaluation (paper Sec. 7.2): pixel, component, open-set and panoptic metrics,
dataset readers, and the ``m2a-pipe evaluate`` command group.

Modules: :mod:`.pixel` (AuPRC / FPR95 / AUROC, streamed), :mod:`.components` (sIoU / PPV /
F1*), :mod:`.open_set` (open-IoU), :mod:`.panoptic` (PQ / SQ / RQ), :mod:`.datasets`
(readers and the one label map), :mod:`.inputs` (score files paired with labels),
:mod:`.report` (whole-dataset reports), :mod:`.predict` (model runs written to files),
:mod:`.plots` (PR / ROC PNG), :mod:`.cli`.
"""

_LAZY = {
    "PROFILES": "components", "ComponentAccumulator": "components", "image_components": "components",
    "OpenSetAccumulator": "open_set", "calibrate_threshold": "open_set", "iou_per_class": "open_set",
    "PanopticAccumulator": "panoptic", "pq_image": "panoptic",
    "PixelAccumulator": "pixel", "PixelMetrics": "pixel",
}
"""Public names, imported from their module on first use (the package itself stays light)."""

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"m2a_pipe.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'm2a_pipe.evaluation' has no attribute {name!r}")
