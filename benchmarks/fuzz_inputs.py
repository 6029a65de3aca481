"""Feed ``m2a-pipe process`` damaged copies of real clips and count crashes, hangs and lost inputs.

    python benchmarks/fuzz_inputs.py [CLIP ...] [--files 160] [--good 4] [--batch 40] [--seed 0]
                                     [--weights demo] [--short-side 64] [--timeout 120] [--keep DIR]

From each CLIP (default: a 2 s 192x96 ``m2a-pipe synth video`` clip, MP4, plus its remux to
Matroska and MPEG-TS) the script writes ``--good`` untouched copies and, round-robin over the
clips, ``--files`` damaged ones, each of one kind with a seeded position:

* ``flip``: 1-64 random bytes replaced;   * ``truncate``: cut at 1-99 % of the bytes;
* ``zero-head``: the first 16-4096 bytes zeroed;   * ``zero-block``: a block in the middle zeroed;
* ``garbage``: random bytes of the clip's size;   * ``splice``: a block copied over another.

They are processed in batches (``--batch`` files a run) by the real command line in a child
process with a wall-clock limit of ``--timeout`` seconds per file of the batch, into one OUT.
A run is a **crash** when it exits other than 0 or 1 or prints a traceback, a **hang** when it
outlives its limit. Then the outputs are
checked: every good copy must be ``complete``; every input the summary calls ``failed`` must be
listed in ``OUT/failures.jsonl`` and every other one must have its output folder. Printed:
the command line, the files per kind, then ``crashes N, hangs N, good clips complete G/G,
damaged: F failed (L listed in failures.jsonl), P partial, C complete, M missing``.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import av

from m2a_pipe.errors import M2AError
from m2a_pipe.model.registry import resolve

KINDS = ("flip", "truncate", "zero-head", "zero-block", "garbage", "splice")


def damage(data: bytes, kind: str, rng: random.Random) -> bytes:
    """A damaged copy of ``data`` (the bytes of a clip) of one ``kind`` (see the module docstring)."""
    out = bytearray(data)
    n = len(out)
    if kind == "flip":
        for _ in range(rng.randint(1, 64)):
            out[rng.randrange(n)] = rng.randrange(256)
    elif kind == "truncate":
        out = out[: max(1, int(n * rng.uniform(0.01, 0.99)))]
    elif kind == "zero-head":
        size = min(n, rng.randint(16, 4096))
        out[:size] = bytes(size)
    elif kind == "zero-block":
        size = min(n // 4, rng.randint(64, 16384))
        start = rng.randrange(n // 4, n - size)
        out[start:start + size] = bytes(size)
    elif kind == "garbage":
        out = bytearray(rng.randbytes(n))
    elif kind == "splice":
        size = min(n // 4, rng.randint(64, 16384))
        src, dst = rng.randrange(n - size), rng.randrange(n - size)
        out[dst:dst + size] = data[src:src + size]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return bytes(out)


def remux(src: Path, dst: Path) -> Path:
    """``src`` copied packet for packet into the container of ``dst``'s suffix."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = target
            out.mux(packet)
    return dst


def default_clips(folder: Path) -> list[Path]:
    """A small synthetic clip as MP4, Matroska and MPEG-TS."""
    mp4 = folder / "synth.mp4"
    subprocess.run([sys.executable, "-m", "m2a_pipe", "synth", "video", "--seed", "3", "--seconds", "2", "--fps",
                    "10", "--size", "192x96", "-q", "-o", str(mp4)], check=True)
    return [mp4, remux(mp4, folder / "synth.mkv"), remux(mp4, folder / "synth.ts")]


def make_corpus(clips: list[Path], folder: Path, files: int, good: int, seed: int) -> dict[str, str]:
    """Write the good and damaged copies into ``folder``; returns file name -> kind (``good`` or a damage)."""
    rng = random.Random(seed)
    kinds: dict[str, str] = {}
    for i in range(good):
        clip = clips[i % len(clips)]
        name = f"good_{i:03d}{clip.suffix}"
        (folder / name).write_bytes(clip.read_bytes())
        kinds[name] = "good"
    for i in range(files):
        clip, kind = clips[i % len(clips)], KINDS[(i // len(clips)) % len(KINDS)]
        name = f"bad_{i:03d}_{kind}{clip.suffix}"
        (folder / name).write_bytes(damage(clip.read_bytes(), kind, rng))
        kinds[name] = kind
    return kinds


def run_batch(names: list[str], corpus: Path, out: Path, args: argparse.Namespace) -> tuple[str, dict[str, dict]]:
    """One ``m2a-pipe process`` run over ``names``: (outcome, file name -> its summary row).
    The outcome is ``ok``, ``crash`` (exit status other than 0/1, or a traceback) or ``hang``."""
    summary = out.parent / f"summary-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "m2a_pipe", "process", *(str(corpus / n) for n in names), "-o", str(out),
           "--weights", args.weights, "--short-side", str(args.short_side), "--device", "cpu", "-q",
           "--json", str(summary)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout * len(names))
    except subprocess.TimeoutExpired:
        return "hang", {}
    if done.returncode not in (0, 1) or "Traceback" in done.stderr or not summary.is_file():
        print(f"crash (exit {done.returncode}) on {' '.join(names)}:\n{done.stderr[-2000:]}", file=sys.stderr)
        return "crash", {}
    rows = json.loads(summary.read_text())["videos"]
    return "ok", {Path(row["source"]).name: row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(prog="fuzz_inputs.py", description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path, help="Real clips to damage [a synthetic clip, 3 containers].")
    parser.add_argument("--files", type=int, default=160, help="Damaged files [160].")
    parser.add_argument("--good", type=int, default=4, help="Untouched copies [4].")
    parser.add_argument("--batch", type=int, default=40, help="Files per process run [40].")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="demo", help="Weights of the runs [demo].")
    parser.add_argument("--short-side", type=int, default=64, help="Network input short side [64].")
    parser.add_argument("--timeout", type=float, default=120,
                        help="Seconds per file a run may take before it is a hang [120].")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the corpus and outputs in this folder.")
    args = parser.parse_args()
    try:  # a run that cannot start is the benchmark's own mistake, not a crash of the pipeline
        resolve(args.weights)
    except M2AError as err:
        parser.error(f"--weights {args.weights}: {err}")
    print("command: " + shlex.join(["python", "benchmarks/fuzz_inputs.py", *sys.argv[1:]]), flush=True)

    with tempfile.TemporaryDirectory(prefix="m2a-fuzz-") as tmp:
        root = args.keep or Path(tmp)
        corpus, out = root / "corpus", root / "out"
        corpus.mkdir(parents=True, exist_ok=True)
        clips = args.clips or default_clips(root)
        kinds = make_corpus(clips, corpus, args.files, args.good, args.seed)
        print("files: " + ", ".join(f"{n} {k}" for k, n in sorted(Counter(kinds.values()).items())), flush=True)
        names = sorted(kinds)
        outcomes: Counter = Counter()
        rows: dict[str, dict] = {}
        listed: set[str] = set()
        started = time.perf_counter()
        for start in range(0, len(names), args.batch):
            outcome, batch_rows = run_batch(names[start:start + args.batch], corpus, out, args)
            outcomes[outcome] += 1
            rows.update(batch_rows)
            failures = out / "failures.jsonl"   # the list of the latest run: read after each
            if failures.is_file():
                listed |= {Path(json.loads(line)["source"]).name for line in failures.read_text().splitlines()}
        status = Counter()
        for name in names:
            row = rows.get(name)
            state = row["status"] if row else "missing"
            if row and state in ("complete", "partial") and not (Path(row["out_dir"]) / "summary.json").is_file():
                state = "missing"
            status[(kinds[name] == "good", state)] += 1
        failed = [n for n in names if rows.get(n, {}).get("status") == "failed"]
        good = sum(1 for k in kinds.values() if k == "good")
        print(f"crashes {outcomes['crash']}, hangs {outcomes['hang']}, good clips complete "
              f"{status[(True, 'complete')]}/{good}, damaged: {status[(False, 'failed')]} failed "
              f"({sum(1 for n in failed if n in listed)} listed in failures.jsonl), {status[(False, 'partial')]} "
              f"partial, {status[(False, 'complete')]} complete, {status[(False, 'missing')]} missing; "
              f"{len(names)} files in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
