"""m2a-pipe: Mask2Anomaly over dashcam video, on one GPU or a Ray cluster.

The public API is imported lazily, so ``import m2a_pipe`` (and the light commands) never
load torch::

    from m2a_pipe import process, RayConfig       # the main job (m2a_pipe.pipeline)
    from m2a_pipe.inference import Predictor      # images in, maps out
    from m2a_pipe.mining import mine              # rank the events of an output tree
"""

from m2a_pipe._version import __version__

_LAZY = {"process": "m2a_pipe.pipeline.process", "RayConfig": "m2a_pipe.pipeline.config",
         "ProcessConfig": "m2a_pipe.pipeline.config"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """The names of ``_LAZY``, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'm2a_pipe' has no attribute {name!r}")
