"""m2a-pipe: Mask2Anomaly over dashcam video, on one GPU or a Ray cluster."""

__version__ = "0.1.0"
