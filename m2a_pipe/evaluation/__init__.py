"""Benchmark evaluation (paper Sec. 7.2): pixel, component, open-set and panoptic metrics,
dataset readers, and the ``m2a-pipe evaluate`` command group.

Modules: :mod:`.pixel` (AuPRC / FPR95 / AUROC, streamed), :mod:`.components` (sIoU / PPV /
F1*), :mod:`.open_set` (open-IoU), :mod:`.panoptic` (PQ / SQ / RQ), :mod:`.datasets`
(readers and the one label map), :mod:`.inputs` (score files paired with labels),
:mod:`.report` (whole-dataset reports), :mod:`.predict` (model runs written to files),
:mod:`.plots` (PR / ROC PNG), :mod:`.cli`.
"""

from m2a_pipe.evaluation.components import PROFILES, ComponentAccumulator, image_components
from m2a_pipe.evaluation.open_set import OpenSetAccumulator, calibrate_threshold, iou_per_class
from m2a_pipe.evaluation.panoptic import PanopticAccumulator, pq_image
from m2a_pipe.evaluation.pixel import PixelAccumulator, PixelMetrics

__all__ = [
    "PROFILES",
    "ComponentAccumulator",
    "OpenSetAccumulator",
    "PanopticAccumulator",
    "PixelAccumulator",
    "PixelMetrics",
    "calibrate_threshold",
    "image_components",
    "iou_per_class",
    "pq_image",
]
