"""What ``m2a-pipe mine`` writes: ``events.csv``, ``contact_sheet.jpg`` and ``report.html``.

``report.html`` is one static file with no scripts and nothing fetched from the network:

* the top events as cards, each with its thumbnail **embedded** (a base64 ``data:`` URI, so
  the top of the report shows wherever the file is copied), rank, score, times, size, the
  manifest columns, its clip as a ``<video>`` when clips were made, and links to the video's
  ``overlay.mp4`` at the event's time (``#t=``) and to its row below;
* one row per mined video with its ``timeline.png`` (lazy-loaded) and a link to its
  ``overlay.mp4``; these, and the clips, are **relative links** (to OUT_ROOT's folders and to
  ``clips/`` next to the report), so they work while the report stays where it was written
  relative to OUT_ROOT (the default ``OUT_ROOT/report`` moves with OUT_ROOT);
* the skipped folders with their reasons, the weights the videos were made with (and their
  notice: the demo weights know only a synthetic world), and the ranking rule.

Scores are printed with :func:`score_text`: three decimals, more near 1 where three would
print ties (0.99987, not 1.000), so the printed order is the ranked one.

The first card's thumbnail is drawn at a fixed place, :data:`FIRST_THUMB_BOX` (CSS pixels from
the top-left of the page), which the headless-browser test checks.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFont

from m2a_pipe.io.layout import written_atomically
from m2a_pipe.mining.outputs import OVERLAY_FILE, TIMELINE_FILE, Skipped, VideoFolder
from m2a_pipe.mining.ranking import RANKING_RULE, RankSpool

EVENTS_CSV = "events.csv"
CONTACT_SHEET = "contact_sheet.jpg"
REPORT_HTML = "report.html"
CLIPS_DIR = "clips"

EVENT_COLUMNS = ("event_id", "kind", "track_id", "start_s", "end_s", "duration_s", "start_frame", "end_frame",
                 "n_frames", "peak_score", "peak_frame", "peak_s", "max_area_px", "max_area_fraction")
BBOX_COLUMNS = ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")
HEAD_COLUMNS = ("rank", "video", "source")
TAIL_COLUMNS = ("thumbnail", "clip")
STANDARD_COLUMNS = HEAD_COLUMNS + EVENT_COLUMNS + BBOX_COLUMNS + TAIL_COLUMNS

# Page geometry (CSS px): fixed-height header, then the cards; see FIRST_THUMB_BOX.
HEADER_PX = 92
GRID_PAD_PX = 16
CARD_PAD_PX = 12
THUMB_W_PX, THUMB_H_PX = 256, 192
FIRST_THUMB_BOX = (GRID_PAD_PX + CARD_PAD_PX, HEADER_PX + GRID_PAD_PX + CARD_PAD_PX, THUMB_W_PX, THUMB_H_PX)
THUMB_BACKGROUND = "#dde3ea"   # the letterbox around thumbnails of another aspect ratio

# Contact sheet geometry (image px).
SHEET_COLUMNS = 5
SHEET_PAD_PX = 8
SHEET_LABEL_PX = 38
SHEET_BACKGROUND = (255, 255, 255)
SHEET_CELL_BACKGROUND = (221, 227, 234)
SHEET_TEXT = (20, 20, 20)
SHEET_JPEG_QUALITY = 88


@dataclass
class TopEvent:
    """One of the top events: everything the contact sheet and the HTML cards show.

    ``video_index`` numbers the mined videos in scan order (the HTML anchors ``#video-N``);
    ``thumbnail`` is the thumbnail file (None when the event has none); ``clip`` the clip file
    once made.
    """

    seq: int
    video: VideoFolder
    video_index: int
    event: Mapping[str, Any]
    thumbnail: Path | None
    rank: int = 0
    clip: Path | None = None
    clip_note: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


# -- events.csv -------------------------------------------------------------------------------


def extra_column(name: str) -> str:
    """The CSV column of a manifest column: its own name, or ``extra_<name>`` when that would
    clash with a standard column."""
    return f"extra_{name}" if name in STANDARD_COLUMNS else name


def csv_header(extra_keys: Iterable[str]) -> list[str]:
    """rank, video, source, the manifest columns (sorted), the event's fields, thumbnail, clip."""
    return [*HEAD_COLUMNS, *(_cell(extra_column(k)) for k in sorted(extra_keys)), *EVENT_COLUMNS, *BBOX_COLUMNS,
            *TAIL_COLUMNS]


def spool_row(video: VideoFolder, event: Mapping[str, Any], thumbnail: str) -> dict[str, Any]:
    """The JSON row kept for one event until the CSV is written in rank order."""
    return {"video": video.rel, "source": video.source, "extra": dict(video.extra), "thumbnail": thumbnail,
            "event": {k: event.get(k) for k in (*EVENT_COLUMNS, "bbox_at_peak")}}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""Text a spreadsheet would run as a formula: such a cell gets a leading ``'``."""


def _cell(value: Any) -> Any:
    """A CSV cell: None empty, text that a spreadsheet would take for a formula escaped."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(rank: int, row: Mapping[str, Any], extra_keys: Sequence[str], clip: str = "") -> list[Any]:
    """One ``events.csv`` row (columns of :func:`csv_header` with the same ``extra_keys``)."""
    event = row["event"]
    bbox = event.get("bbox_at_peak")
    bbox = list(bbox) if isinstance(bbox, (list, tuple)) and len(bbox) == 4 else [None] * 4
    extra = row.get("extra") or {}
    return [rank, _cell(row["video"]), _cell(row["source"]), *(_cell(extra.get(k, "")) for k in sorted(extra_keys)),
            *(_cell(event.get(k)) for k in EVENT_COLUMNS), *(_cell(v) for v in bbox), _cell(row.get("thumbnail", "")),
            _cell(clip)]


def write_events_csv(path: Path, spool: RankSpool, extra_keys: Iterable[str], clips: Mapping[int, str]) -> int:
    """Write every spooled event in rank order; ``clips`` maps sequence numbers to clip paths.
    Returns the number of rows. Written under a temporary name and renamed."""
    keys = sorted(extra_keys)
    n = 0
    with written_atomically(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(keys))
        for rank, seq, row in spool.ranked():
            writer.writerow(csv_row(rank, row, keys, clips.get(seq, "")))
            n += 1
    return n


# -- contact_sheet.jpg ------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text``, shortened from the left with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def _load_thumbnail(path: Path | None, box: tuple[int, int]) -> Image.Image | None:
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except OSError:
        return None
    scale = min(box[0] / image.width, box[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def write_contact_sheet(path: Path, top: Sequence[TopEvent]) -> None:
    """A grid of the top events' thumbnails (:data:`SHEET_COLUMNS` a row, each scaled to fit
    256x192 px) labelled with rank, peak score, duration and video folder."""
    cell_w, cell_h = THUMB_W_PX, THUMB_H_PX
    columns = max(1, min(SHEET_COLUMNS, len(top)))
    rows = max(1, -(-len(top) // columns))
    width = SHEET_PAD_PX + columns * (cell_w + SHEET_PAD_PX)
    height = SHEET_PAD_PX + rows * (cell_h + SHEET_LABEL_PX + SHEET_PAD_PX)
    sheet = Image.new("RGB", (width, height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    if not top:
        draw.text((SHEET_PAD_PX * 2, SHEET_PAD_PX * 2), "no events", fill=SHEET_TEXT, font=font)
    for i, item in enumerate(top):
        x = SHEET_PAD_PX + (i % columns) * (cell_w + SHEET_PAD_PX)
        y = SHEET_PAD_PX + (i // columns) * (cell_h + SHEET_LABEL_PX + SHEET_PAD_PX)
        draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=SHEET_CELL_BACKGROUND)
        thumb = _load_thumbnail(item.thumbnail, (cell_w, cell_h))
        if thumb is None:
            draw.text((x + 8, y + cell_h // 2 - 7), "no thumbnail", fill=SHEET_TEXT, font=font)
        else:
            sheet.paste(thumb, (x + (cell_w - thumb.width) // 2, y + (cell_h - thumb.height) // 2))
        ev = item.event
        line1 = f"#{item.rank}  score {score_text(ev['peak_score'])}  {float(ev['duration_s']):.1f} s"
        line2 = f"{item.video.rel}  event {ev['event_id']}"
        draw.text((x, y + cell_h + 3), _fit_text(draw, line1, font, cell_w), fill=SHEET_TEXT, font=font)
        draw.text((x, y + cell_h + 20), _fit_text(draw, line2, font, cell_w), fill=SHEET_TEXT, font=font)
    with written_atomically(path) as tmp:
        sheet.save(tmp, format="JPEG", quality=SHEET_JPEG_QUALITY)


# -- report.html ------------------------------------------------------------------------------

_CSS = f"""
body {{ margin: 0; background: #f3f4f6; color: #111; font: 14px/1.35 system-ui, sans-serif; }}
header {{ height: {HEADER_PX}px; box-sizing: border-box; padding: 10px {GRID_PAD_PX}px; overflow: hidden;
  background: #1f2933; color: #fff; }}
header h1 {{ margin: 0; font-size: 20px; }} header p {{ margin: 4px 0 0; color: #cbd2d9; }}
header p.note {{ color: #fbbf24; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
#top {{ display: flex; flex-wrap: wrap; align-items: flex-start; gap: {GRID_PAD_PX}px;
  padding: {GRID_PAD_PX}px; margin: 0; }}
.card {{ width: {THUMB_W_PX + 2 * CARD_PAD_PX}px; box-sizing: border-box; padding: {CARD_PAD_PX}px; margin: 0;
  background: #fff; box-shadow: 0 1px 3px rgba(0,0,0,.2); border-radius: 4px; }}
.thumb {{ display: block; width: {THUMB_W_PX}px; height: {THUMB_H_PX}px; object-fit: contain;
  background: {THUMB_BACKGROUND}; margin: 0; }}
.nothumb {{ display: flex; align-items: center; justify-content: center; color: #555; }}
.card .title {{ margin-top: 6px; font-weight: 600; }} .card .rank {{ color: #b91c1c; }}
.card .meta {{ color: #333; font-size: 12px; margin-top: 3px; overflow-wrap: anywhere; }}
.card video {{ display: block; width: {THUMB_W_PX}px; margin-top: 6px; }}
section {{ padding: 0 {GRID_PAD_PX}px {GRID_PAD_PX}px; }} h2 {{ font-size: 17px; margin: 12px 0 8px; }}
table {{ border-collapse: collapse; background: #fff; }}
td, th {{ border: 1px solid #d9dde2; padding: 4px 6px; vertical-align: top; text-align: left; font-size: 12px; }}
td img {{ display: block; width: 600px; max-width: 60vw; }}
code {{ font-size: 12px; }}
"""


def plural(n: int, noun: str) -> str:
    """``"1 video"``, ``"2 videos"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def href(target: Path, report_dir: Path) -> str:
    """A URL-quoted relative link from ``report_dir`` to ``target``."""
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(report_dir))
    return quote(Path(rel).as_posix(), safe="/")


def data_uri(path: Path) -> str | None:
    """``data:image/jpeg;base64,...`` of an image file, None when it cannot be read."""
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    try:
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
    except OSError:
        return None


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _extras(extra: Mapping[str, str]) -> str:
    return " · ".join(f"{_esc(k)}={_esc(v)}" for k, v in sorted(extra.items()))


def score_text(score: Any) -> str:
    """A peak score with the decimals that keep distinct scores apart: three, or up to seven
    when the score is within 0.001 of 1 (``0.99987``), where three would print ``1.000``."""
    value = float(score)
    digits = 3
    if 0.999 <= value < 1.0:
        digits = min(7, 1 - math.floor(math.log10(1.0 - value)))
    return f"{value:.{digits}f}"


def _num(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def card_html(item: TopEvent, report_dir: Path) -> str:
    """The HTML card of one top event."""
    ev, video = item.event, item.video
    uri = data_uri(item.thumbnail) if item.thumbnail is not None else None
    alt = f"rank {item.rank}: {video.rel} event {ev['event_id']}"
    if uri:
        picture = (f'<img class="thumb" src="{uri}" alt="{_esc(alt)}" width="{THUMB_W_PX}" '
                   f'height="{THUMB_H_PX}">')
    else:
        picture = '<div class="thumb nothumb">no thumbnail</div>'
    track = f"track {ev['track_id']}" if ev.get("track_id") is not None else str(ev.get("kind", "frames"))
    frac = ev.get("max_area_fraction")
    size = f"area {float(frac) * 100:.2f} % ({ev.get('max_area_px', 0)} px)" if frac is not None else \
        f"area {ev.get('max_area_px', 0)} px"
    bbox = ev.get("bbox_at_peak")
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        size += " · box " + ", ".join(f"{float(v):.0f}" for v in bbox)
    parts = [f'<div class="card" id="rank-{item.rank}">', picture,
             f'<div class="title"><span class="rank">#{item.rank}</span> score {score_text(ev["peak_score"])}'
             f' · {float(ev["duration_s"]):.2f} s</div>',
             f'<div class="meta">{_esc(video.rel)} · event {_esc(ev["event_id"])} · {_esc(track)}</div>',
             f'<div class="meta">{_num(ev["start_s"])}–{_num(ev["end_s"])} s · frames {_esc(ev["start_frame"])}–'
             f'{_esc(ev["end_frame"])} · peak at {_num(ev.get("peak_s"))} s</div>',
             f'<div class="meta">{_esc(size)}</div>']
    if video.extra:
        parts.append(f'<div class="meta">{_extras(video.extra)}</div>')
    if item.clip is not None:
        parts.append(f'<video controls preload="metadata" muted src="{href(item.clip, report_dir)}"></video>')
    links = [f'<a href="#video-{item.video_index}">timeline</a>']
    if video.has(OVERLAY_FILE):
        t = max(0.0, float(ev["start_s"]))
        links.insert(0, f'<a href="{href(video.path / OVERLAY_FILE, report_dir)}#t={t:.2f}">overlay</a>')
    parts.append(f'<div class="meta">{" · ".join(links)}</div></div>')
    return "\n".join(parts)


def video_row_html(video: VideoFolder, index: int, n_events: int, n_kept: int, report_dir: Path) -> str:
    """The HTML table row of one mined video: folder (overlay link), source, counts, timeline."""
    attrs = video.attrs
    name = _esc(video.rel)
    if video.has(OVERLAY_FILE):
        name = f'<a href="{href(video.path / OVERLAY_FILE, report_dir)}">{name}</a>'
    timeline = (f'<img loading="lazy" src="{href(video.path / TIMELINE_FILE, report_dir)}" alt="timeline">'
                if video.has(TIMELINE_FILE) else "no timeline")
    size = f"{attrs.get('width', '?')}x{attrs.get('height', '?')}"
    fps = f"{float(attrs['fps']):.2f}" if isinstance(attrs.get("fps"), (int, float)) else "?"
    status = "" if video.status == "complete" else f"<br>{_esc(video.status)}: {_esc(attrs.get('error', ''))}"
    return (f'<tr id="video-{index}"><td>{name}<br><code>{_esc(video.source)}</code>{status}</td>'
            f"<td>{n_kept} / {n_events}</td><td>{_esc(attrs.get('n_frames', '?'))}</td><td>{fps}</td>"
            f"<td>{size}</td><td>{_extras(video.extra)}</td><td>{timeline}</td></tr>\n")


def skipped_item_html(skipped: Skipped) -> str:
    """The HTML list item of one skipped folder."""
    return f"<li><code>{_esc(skipped.rel)}</code>: {_esc(skipped.reason)}</li>\n"


def write_report_html(path: Path, *, out_root: Path, counts: Mapping[str, int], top: Sequence[TopEvent],
                      videos_fragment: IO[str], skipped_fragment: IO[str], filters: str,
                      weights: Mapping[str, str] | None = None) -> None:
    """Assemble ``report.html`` from the top events and the spooled video and skipped rows
    (the two fragments are text files positioned anywhere; they are read from their start);
    ``weights``: the weights' names the videos were made with -> their notice (or "")."""
    weights = dict(weights or {})
    report_dir = path.parent
    title = f"m2a-pipe mine: {out_root}"
    summary = (f"{plural(counts['videos'], 'video')} mined, {plural(counts['skipped'], 'folder')} skipped · "
               f"{counts['kept']} events ranked of {counts['events']}{filters} · top {len(top)} shown"
               f" · weights {', '.join(sorted(weights)) or '?'}")
    notes = [f"{name}: {note}" for name, note in sorted(weights.items()) if note]
    with written_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{_esc(title)}</title>\n'
                f"<style>{_CSS}</style></head>\n<body>\n")
        f.write(f"<header><h1>Anomalous events: {_esc(out_root)}</h1><p>{_esc(summary)}</p>"
                + "".join(f'<p class="note" title="{_esc(n)}">{_esc(n)}</p>' for n in notes[:1]) + "</header>\n")
        f.write('<div id="top">\n')
        for item in top:
            f.write(card_html(item, report_dir) + "\n")
        if not top:
            f.write('<div class="card"><div class="thumb nothumb">no events</div></div>\n')
        f.write("</div>\n")
        f.write('<section><h2>Videos</h2>\n<table><tr><th>video (overlay) / source</th><th>events ranked / all</th>'
                "<th>frames</th><th>video fps</th><th>size</th><th>manifest</th><th>timeline</th></tr>\n")
        videos_fragment.seek(0)
        for line in videos_fragment:
            f.write(line)
        f.write("</table></section>\n")
        f.write(f"<section><h2>Skipped folders ({counts['skipped']})</h2>\n<ul>\n")
        skipped_fragment.seek(0)
        for line in skipped_fragment:
            f.write(line)
        f.write("</ul></section>\n")
        f.write("<section><h2>Weights</h2><ul>\n" + "".join(
            f"<li><code>{_esc(name)}</code>{': ' + _esc(note) if note else ''}</li>\n"
            for name, note in sorted(weights.items())) + "</ul></section>\n")
        f.write(f"<section><h2>Ranking</h2><p>Events are ranked by {_esc(RANKING_RULE)}. "
                f"The full table is <a href=\"{EVENTS_CSV}\">{EVENTS_CSV}</a>; the thumbnails above are embedded, "
                "timelines, overlays and clips are linked relative to this file.</p></section>\n")
        f.write("</body></html>\n")
