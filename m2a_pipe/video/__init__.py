"""Everything after the model that concerns a video as a sequence of frames: the tracker,
events, their thumbnails, the MOT file, the timeline and the overlay picture. Torch-free."""
