"""The names of a video's output folder, shared by the pipeline that writes it and the tools
that read it (``m2a-pipe mine``, ``m2a-pipe clip``). No heavy imports: readers stay light.

    OUT/<rel>/<stem>/                 a finished video (renamed into place when complete)
    OUT/<rel>/.<stem>.partial-<pid>   the folder being written by process <pid>
    OUT/<rel>/.<stem>.old-<pid>       a replaced output, removed right after the rename
    OUT/failures.jsonl                the inputs that failed in the latest run (path, reason)
"""

SCORES_FILE = "scores.h5"
OVERLAY_FILE = "overlay.mp4"
TRACKS_FILE = "tracks.csv"
EVENTS_FILE = "events.jsonl"
TIMELINE_FILE = "timeline.png"
SUMMARY_FILE = "summary.json"
THUMBS_DIR = "thumbs"
FAILURES_FILE = "failures.jsonl"

PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"
TEMPORARY_MARKS = (PARTIAL_MARK, OLD_MARK)
