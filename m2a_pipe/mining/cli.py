"""``m2a-pipe mine`` and ``m2a-pipe clip``: parse and delegate to :mod:`m2a_pipe.mining`.

Torch-free: both commands start without the model stack.
"""

from __future__ import annotations

import click

from m2a_pipe.mining.miner import CLIP_AFTER_S, CLIP_BEFORE_S, DEFAULT_TOP


@click.command("mine")
@click.argument("out_root", type=click.Path(file_okay=False))
@click.option("--top", "top", type=click.IntRange(min=0), default=DEFAULT_TOP, show_default=True, metavar="N",
              help="Events on the contact sheet and in the HTML report (and clipped with --clips).")
@click.option("--min-score", type=float, default=None, metavar="S", help="Keep events whose peak score is at least S.")
@click.option("--min-duration", type=click.FloatRange(min=0), default=None, metavar="SEC",
              help="Keep events lasting at least SEC seconds.")
@click.option("-o", "--output", "report_dir", type=click.Path(file_okay=False), default=None, metavar="REPORT_DIR",
              help="Report folder.  [default: OUT_ROOT/report]")
@click.option("--clips", is_flag=True, help="Cut a clip of each top event into REPORT_DIR/clips/.")
@click.option("--include-partial", is_flag=True,
              help="Also mine videos whose decoding lost frames (status partial); skipped by default.")
@click.option("-q", "--quiet", is_flag=True, help="Do not list the skipped folders.")
def mine_cmd(out_root: str, top: int, min_score: float | None, min_duration: float | None, report_dir: str | None,
             clips: bool, include_partial: bool, quiet: bool) -> None:
    """Rank the anomalous events of every processed video under OUT_ROOT.

    Streams over the video folders (only the root attributes of scores.h5 and events.jsonl are
    read), lists the folders it skips (partial, temporary, missing files; one line each) and
    writes REPORT_DIR/events.csv (every event, ranked), contact_sheet.jpg and report.html.
    Ranking: peak score, then duration, then largest area, all highest first.

    \b
    Example:
      m2a-pipe mine out --top 100 --min-score 0.8 --clips -o review/
    """
    from m2a_pipe.mining.miner import mine

    log = None if quiet else (lambda line: click.echo(f"m2a-pipe: {line}", err=True))
    result = mine(out_root, report_dir, top=top, min_score=min_score, min_duration=min_duration, clips=clips,
                  include_partial=include_partial, log=log)
    click.echo(result.summary())


@click.command("clip")
@click.argument("video_out", type=click.Path(file_okay=False))
@click.argument("event_id", type=int)
@click.option("--before", type=click.FloatRange(min=0), default=CLIP_BEFORE_S, show_default=True, metavar="SEC",
              help="Seconds before the event's first frame.")
@click.option("--after", type=click.FloatRange(min=0), default=CLIP_AFTER_S, show_default=True, metavar="SEC",
              help="Seconds after the event's last frame.")
@click.option("--overlay/--source", "use_overlay", default=None,
              help="Cut from overlay.mp4 or from the source video.  [default: the source when it is there, else "
                   "the overlay]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Clip file.  [default: <video folder name>_event_NNNN.mp4 in the current folder]")
def clip_cmd(video_out: str, event_id: int, before: float, after: float, use_overlay: bool | None,
             output: str | None) -> None:
    """Cut an H.264 clip around event EVENT_ID of the video output folder VIDEO_OUT.

    The clip spans start_s - BEFORE to end_s + AFTER (clipped to the video). Its timestamps
    start at 0; the printed line gives the source time of its first frame.

    \b
    Example:
      m2a-pipe clip out/drive 3 --before 2 --after 2 -o crash.mp4
    """
    from pathlib import Path

    from m2a_pipe.mining.clips import cut_clip

    use = "auto" if use_overlay is None else ("overlay" if use_overlay else "source")
    folder = Path(video_out)
    suffix = "_overlay" if use == "overlay" else ""
    target = Path(output) if output else Path(f"{folder.resolve().name}_event_{event_id:04d}{suffix}.mp4")
    result = cut_clip(folder, event_id, target, before=before, after=after, use=use)
    if result.note:
        click.echo(f"m2a-pipe: {result.note}", err=True)
    click.echo(f"wrote {result.path}: {result.n_frames} frames from the {result.kind} "
               f"({result.clip_start_s:.3f}-{result.clip_end_s:.3f} s of it; the clip starts at 0, "
               f"the event at {result.event_offset_s:.3f} s)")

