"""Mask2Anomaly in pure PyTorch, in the official detectron2 module and key layout."""
