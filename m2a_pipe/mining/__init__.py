"""Fleet-log mining: the most anomalous events across many processed videos.

* :func:`mine` (``m2a-pipe mine OUT_ROOT``): walks a pipeline output tree, skips unfinished,
  partial and temporary folders (one line each), ranks every event and writes
  ``events.csv``, ``contact_sheet.jpg``, ``report.html`` and, on request, clips of the top events.
* :func:`cut_clip` (``m2a-pipe clip VIDEO_OUT EVENT_ID``): an H.264 clip around one event, from
  the source video or from ``overlay.mp4``; its timestamps start at 0.

Ranking: peak score, then duration, then largest area (fraction of the frame, then pixels), all
highest first, then video path and event order (:mod:`m2a_pipe.mining.ranking`).

Modules: ``outputs`` (walking and reading output folders), ``ranking`` (top-N heap, spooled full
ranking), ``report`` (CSV, contact sheet, HTML), ``clips`` (cutting), ``miner`` (the pass).
Nothing here imports torch.
"""

from m2a_pipe.mining.clips import ClipError, ClipResult, cut_clip
from m2a_pipe.mining.miner import DEFAULT_TOP, MineError, MineResult, mine
from m2a_pipe.mining.outputs import OutputError, Skipped, VideoFolder, walk_outputs
from m2a_pipe.mining.ranking import RANKING_RULE, rank_key

__all__ = ["ClipError", "ClipResult", "cut_clip", "DEFAULT_TOP", "MineError", "MineResult", "mine", "OutputError",
           "Skipped", "VideoFolder", "walk_outputs", "RANKING_RULE", "rank_key"]
