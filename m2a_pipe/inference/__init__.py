"""Inference: preprocessing, the forward pass, scoring and instances.

Layers, top-down: :mod:`.predictor` (images in, maps at their size out, the official test
path) and :mod:`.stage` (the video pipeline's model stage: frames in, small maps out) share
the forward pass; :mod:`.scoring` (Eq. 3, 5, 13, 14 and the follow-up scores),
:mod:`.instances` (anomaly blobs) and :mod:`.panoptic` (Eq. 15, Sec. 6.3) are pure functions
on documented shapes; :mod:`.preprocess` is the official resize, normalisation and padding.
"""

from m2a_pipe.inference.predictor import Predictor, Result

__all__ = ["Predictor", "Result"]
