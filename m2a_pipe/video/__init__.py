"""Everything after the model that concerns a video as a sequence of frames. Torch-free.

:mod:`~m2a_pipe.video.detections` (a frame's instances with their track ids),
:mod:`~m2a_pipe.video.tracking` (the tracker), :mod:`~m2a_pipe.video.events` (events and
``events.jsonl``), :mod:`~m2a_pipe.video.thumbnails` (their thumbnails),
:mod:`~m2a_pipe.video.mot` (``tracks.csv``), :mod:`~m2a_pipe.video.timeline` (the timeline PNG)
and :mod:`~m2a_pipe.video.render` (the overlay picture)."""
