"""One home for the settings the commands share: option lists, defaults, strides.

Torch-free, so that the command line, configs and the light tools (``m2a-pipe mine``,
``clip``) read them without the model stack. The modules that act on a setting import it
from here; a test checks that the lists agree with the functions they name
(:data:`SCORE_NAMES` with :data:`m2a_pipe.inference.scoring.SCORES`).
"""

from __future__ import annotations

# -- the model's maps --------------------------------------------------------------------

SCORE_NAMES = ("official", "msp", "rba", "max_logit", "energy", "entropy")
"""Anomaly scores, higher = more anomalous: ``official`` = Eq. 5 refined by Eq. 13,
``msp`` = Eq. 5 alone, then the follow-up literature's RbA, max-logit, energy, entropy."""
BOUNDED_SCORES = ("official", "msp")
"""Scores computed from the Eq. 3 class probabilities: values in [0, 1]."""
DEFAULT_SCORE = "official"

MASK_STRIDE = 4
"""The mask logits of Mask2Former are at 1/4 of the padded network input."""
MAP_STRIDES = (1, 2, 4)
"""Resolutions of the score maps, as 1/N of the network input: 4 = the mask logits' own grid
(the pipeline's default), 1 = the mask logits upsampled to the input first (the official
evaluation)."""
DEFAULT_MAP_STRIDE = MASK_STRIDE

DEFAULT_THRESHOLD = 0.5
"""Anomalous-pixel threshold when neither the option nor the weights' metadata gives one."""

# -- devices and batches -----------------------------------------------------------------

DEVICE_HELP = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Values of ``--precision``: ``auto`` = float16 autocast on CUDA, bfloat16 on a CPU with
bfloat16 matrix instructions (AMX-BF16 / AVX512-BF16), float32 elsewhere; or one forced
(``fp32`` for exact parity with the official code; ``fp16`` needs CUDA)."""
DEFAULT_PRECISION = "auto"
BATCH_SIZE_CPU = 1
BATCH_SIZE_CUDA = 8
"""Frames per model batch when the option is not given: 1 on a CPU (nothing to gain, more
latency), 8 on a GPU (float16 autocast keeps 8 frames of 1080p well inside 16 GB)."""


def default_batch_size(device_type: str) -> int:
    """Frames per batch for a model on ``device_type`` (``cpu``, ``cuda``) when none is given."""
    return BATCH_SIZE_CUDA if device_type == "cuda" else BATCH_SIZE_CPU


# -- instances, tracks and events --------------------------------------------------------

INSTANCE_MODES = ("components", "panoptic")
"""``components``: connected components of the thresholded map; ``panoptic``: the unknown
instances of open-set panoptic segmentation (Eq. 15, Sec. 6.3)."""
EVENT_MODES = ("tracks", "frames")
"""Events from confirmed tracks, or from runs of frames whose score passes the threshold."""
OVERLAY_SIZES = ("input", "source")
"""overlay.mp4 at the network input size (the frames the model saw) or at the video's own size."""
OVERLAY_X264_PARAMS = {"lean": ("ultrafast", "cabac=1:bframes=3:b-adapt=0:deblock=0,0:8x8dct=1:partitions=i8x8,i4x4")}
"""The project's own encoder presets: (libx264 preset, x264 parameters over it). ``lean`` is
``ultrafast``'s motion search and decisions (no subpixel refinement, no adaptive B-frame
placement, no adaptive quantisation) with the coding tools that cost little time put back: CABAC,
3 B-frames, the deblocking filter and the 8x8 transform. On the 768x384 example overlay it takes
about 0.7x ``superfast``'s encoder time for a file about 8 % larger, at a higher PSNR
(``python benchmarks/overlay_encoding.py``)."""
OVERLAY_PRESETS = ("lean", "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                   "veryslow")
"""The overlay's encoder presets: the project's (:data:`OVERLAY_X264_PARAMS`), then libx264's, fastest
first."""
DEFAULT_OVERLAY_PRESET = "lean"
"""The overlay's encoder preset. The encoder shares the cores with a CPU model, so its time comes
off the pipeline's speed: on the 768x384 example overlay, one thread of this 2-core CPU, ``lean``
takes 3.2-3.6 ms a frame, ``superfast`` 4.7-5.3 ms and ``veryfast`` 9-10 ms."""
DEFAULT_MIN_HITS = 5
"""Consecutive detections that confirm a track (0.5 s at 10 fps). With the demo weights on 21
synthetic clips (8 of them held out from the choice) 5 against 3 cut the false events from 29
to 17 and found 50 anomalies of 78 against 52 (docs/ARCHITECTURE.md)."""
DEFAULT_MAX_MISSES = 5
INSTANCE_GAP = 1
"""The thresholded map is closed by this many cells before its blobs are found, so the speckled
response of a textured object and the fragments of one object make one instance."""
INSTANCE_MAX_UPSAMPLE = 8
"""Largest factor by which an instance's box is refined below the map grid (the pipeline uses the
map-to-source scale, rounded up, at most this)."""
TRACK_WEAK_RATIO = 0.6
"""Weak detections, for bounded scores: blobs peaking between ``TRACK_WEAK_RATIO * threshold`` and
the threshold, and blobs over the threshold that reach the minimum area only with their rim over
``TRACK_WEAK_RATIO * threshold``; they only extend confirmed tracks (second association stage)."""
TRACK_MERGE_OVERLAP = 0.5
"""A detection left over with at least this fraction of its box inside a matched track's box
(grown by a quarter of its size) is a fragment of that track's object and merged into it."""
TRACK_MERGE_BELOW_COVER = 0.75
"""Only a track whose detection covers less than this fraction of its predicted box takes
fragments: a detection that covers its prediction is the whole object, and a blob beside it is
another object (two objects that touched and parted), not a piece of it."""
TRACK_MERGE_MAX_GAP = 1.0
"""Nor is a blob further from the track's detection than this many times the longer side of the
smaller of the two: the pieces of one object lie close together, two objects that touched and
part drift apart (the gap is the larger of the horizontal and the vertical distance between the
boxes). Of the merges the tracker made on 45 clips, 29 of the 32 that joined pieces of one
object (ground truth as the maps) lay within 1.0, 9 of the 18 that joined two objects beyond it;
with the demo weights' maps 127 of 150 and 0 of 5. On those clips ``--oracle`` MOTA 0.863 ->
0.867 at commit 7571ac2 (0.5: 0.870, but one anomaly and, with the demo weights' maps, one false
event more)."""
TRACK_REJOIN_FRAMES = 30
"""Frames a lost confirmed track is remembered: a new track confirmed within them near where it
was lost takes its id back."""
EVENT_MAX_WIDTH_FRACTION = 0.5
"""A track whose box is wider than this fraction of the frame in most of its frames makes no
event: it is a band (the bonnet, the model's response along the frame's edge, the road), not an
object ahead. Applied to ``components`` instances (panoptic unknown instances are object masks)."""
TRACK_REJOIN_DISTANCE = 2.0
"""Centre distance, in mean box diagonals, within which a new track rejoins a lost one."""
TRACK_MAX_SIZE_CHANGE = 3.0
"""The most a track's box may change in width or in height (either way) to take a detection, or
a new track's box against a lost one it rejoins. A model may light up a wide band along the road
or a whole facade for a frame: with the size-normalised distance alone such a box was close
enough to any small object's track to take it (the track then jumped between the object and the
band, and its event peaked on the band). 3 keeps a piece of an object (its middle dropped out)
on its track. Replaying (at commit 3379ca7) the stored maps of 37 demo-weights clips (21 the
stage was tuned on, 16 newer; ``benchmarks/tracking_quality.py --replay``) with 2, 3 and 4: found 92, 95 and 98 of
137 anomalies (none: 88) with 10, 18 and 25 false events (none: 28); 2 loses a halved object's
pieces (tests/test_track_maps.py)."""


def check_track_lifetimes(min_hits: int, max_misses: int) -> None:
    """The one check of the tracker's lifetimes (``process`` options and ``TrackerConfig``):
    ``min_hits`` >= 1 detections confirm a track, ``max_misses`` >= 0 misses end it.
    Raises UsageError naming the setting."""
    from m2a_pipe.errors import UsageError

    if min_hits < 1:
        raise UsageError(f"min_hits: must be >= 1, got {min_hits}")
    if max_misses < 0:
        raise UsageError(f"max_misses: must be >= 0, got {max_misses}")
