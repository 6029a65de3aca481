"""m2a-pipe: Mask2Anomaly over dashcam video, on one GPU or a Ray cluster."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``m2a_pipe.process`` and ``m2a_pipe.RayConfig`` without importing torch at package import."""
    if name == "process":
        from m2a_pipe.pipeline import process

        return process
    if name == "RayConfig":
        from m2a_pipe.process_config import RayConfig

        return RayConfig
    raise AttributeError(f"module 'm2a_pipe' has no attribute {name!r}")
