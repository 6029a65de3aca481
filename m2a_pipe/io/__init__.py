"""Edges of the pipeline that touch files: video decoding and encoding, input discovery,
and the writers of one video's outputs (HDF5 scores, tracks, events)."""
