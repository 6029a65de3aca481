"""Synthetic dashcam world: labelled road scenes, anomalies in disjoint families, and video.

Public API::

    render_sample(seed, index, size=(512, 256), anomalies="eval") -> Sample
    write_image_dataset(out_dir, seed, count, anomalies="eval", size=(512, 256), workers=1)
    write_outliers(out_dir, seed, count, workers=1)
    write_video(path, seed, seconds, fps, size=(640, 320), anomalies="eval")

Modules: textures (noise bank), geometry (camera, parts), objects (known classes), anomalies
(the train / eval / hard families), scene (road world sampling), render (rasteriser),
sample (one labelled still), dataset (SMIYC / panoptic / outlier writers), video (clips),
cli (the ``m2a-pipe synth`` click group).
"""

from m2a_pipe.synth.anomalies import FAMILIES, GENERATORS, PATTERNS
from m2a_pipe.synth.dataset import render_outlier, write_image_dataset, write_outliers
from m2a_pipe.synth.sample import Sample, render_sample
from m2a_pipe.synth.video import write_video

__all__ = ["FAMILIES", "GENERATORS", "PATTERNS", "Sample", "render_outlier", "render_sample",
           "write_image_dataset", "write_outliers", "write_video"]
