"""One run on a CUDA machine: parity with the CPU float32 golden outputs, model speed, the
pipeline end to end, peak GPU memory; everything in one JSON.

    python benchmarks/gpu_check.py --json gpu_check.json                 # on a GPU, a few minutes
    python benchmarks/gpu_check.py --device cpu --quick --json dry.json  # dry run on a CPU

1. **Parity**: the golden network (``--golden``, default ``../shared/golden/golden_a`` next to
   the repository, as the tests find it) runs through the inference core in float32 and in
   the device's reduced precision (fp16 on CUDA, bf16 on a CPU); its class logits, mask
   logits and model-level anomaly map (Eq. 5 refined by Eq. 13) are compared with the CPU
   float32 golden outputs of the official code, within :data:`TOLERANCES`.
2. **Model speed**: ``m2a-pipe bench model`` (R50 Cityscapes preset, random weights) at
   1024x2048 and 512x1024, batch 1 / 4 / 8 / 16, in fp16 (``--precision``), frames/s and
   peak ``max_memory_allocated``.
3. **Pipeline**: ``m2a-pipe bench pipeline`` on ``--video`` (default examples/drive.mp4) with
   the same R50 network (random weights written to a temporary file) at a short side of 1024
   (1024x2048 network input), batch 8: decode, model and end-to-end frames/s, efficiency.

``--quick`` shrinks everything for a dry run (64x128, batches 1 and 2, short side 64, every
30th frame, one timed run per batch). The first line printed is the command line; the JSON holds it too.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from m2a_pipe.bench.model import bench_model, machine_info
from m2a_pipe.bench.pipeline import DEFAULT_VIDEO, bench_pipeline
from m2a_pipe.config import preset
from m2a_pipe.inference.device import resolve_device
from m2a_pipe.inference.predictor import Predictor
from m2a_pipe.model.checkpoint import load_into, read_state_dict, save_weights
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.pipeline.config import ProcessConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOLDEN = REPO_ROOT.parent / "shared" / "golden" / "golden_a"
TOLERANCES = {
    "fp32": {"pred_logits": 1e-3, "pred_masks": 1e-3, "anomaly_mean_abs": 1e-4},
    "bf16": {"pred_logits": 0.25, "pred_masks": 0.15, "anomaly_mean_abs": 0.08},
    "fp16": {"pred_logits": 0.03, "pred_masks": 0.02, "anomaly_mean_abs": 0.01},
}
"""Largest error allowed per precision: logits max|got - ref| / max|ref|, the anomaly map's
mean absolute error. bf16's are tests/test_parity_bf16.py's (the golden network has random
weights, ill-conditioned in its deep backbone layers); fp16 has 3 more bits of mantissa, so
its bounds are bf16's over 8."""


def parity(golden: Path, device: torch.device, precision: str) -> dict:
    """Errors of the golden network on ``device`` in ``precision`` against the golden outputs."""
    from m2a_pipe.config import ModelConfig

    outputs = dict(np.load(golden / "outputs.npz"))
    model = build_model(ModelConfig.from_reference_json(golden / "config.json"))
    load_into(model, read_state_dict(golden / "checkpoint.pth"), source=str(golden / "checkpoint.pth"))
    predictor = Predictor(copy.deepcopy(model).eval(), device, resize=False, precision=precision)
    image = outputs["input_rgb_uint8"]
    out = predictor.forward([image])
    logits, masks = out["pred_logits"][0].cpu(), out["pred_masks"][0].cpu()
    anomaly = predictor.anomaly_map(out["pred_logits"][0], out["pred_masks"][0], out["input_size"],
                                    image.shape[:2]).cpu().numpy()
    name = predictor.core.precision.name
    tol = TOLERANCES[name]
    errors = {
        "pred_logits": float(np.abs(logits.numpy() - outputs["decoder.pred_logits"]).max()
                             / np.abs(outputs["decoder.pred_logits"]).max()),
        "pred_masks": float(np.abs(masks.numpy() - outputs["decoder.pred_masks"]).max()
                            / np.abs(outputs["decoder.pred_masks"]).max()),
        "anomaly_mean_abs": float(np.abs(anomaly - outputs["anomaly.model.na"].reshape(anomaly.shape)).mean()),
    }
    return {"precision": name, "errors": errors, "tolerances": tol,
            "passed": all(errors[k] <= tol[k] for k in errors)}


def model_speed(device: torch.device, sizes, batches, precision: str, warmup: int = 2, repeats: int = 5) -> list[dict]:
    """bench model (R50, random weights) per size and batch; an out-of-memory is recorded."""
    rows = []
    for height, width in sizes:
        for batch in batches:
            row = {"height": height, "width": width, "batch": batch}
            try:
                r = bench_model(preset("cityscapes-r50"), preset="cityscapes-r50", height=height, width=width,
                                device=str(device), batch=batch, warmup=warmup, repeats=repeats,
                                precisions=(precision,))[0]
                row.update(precision=r.precision, ms_per_frame=round(r.total_median_s * 1000, 2),
                           frames_per_s=round(1 / r.total_median_s, 2), peak_memory_mb=round(r.peak_memory_mb, 1),
                           stage_ms={k: round(v * 1000, 2) for k, v in r.stage_median_s.items()})
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def pipeline_speed(device: torch.device, video: Path, short_side: int, batch: int, precision: str,
                   stride: int = 1) -> dict:
    """bench pipeline with an R50 network of random weights at ``short_side`` (every
    ``stride``-th frame)."""
    with tempfile.TemporaryDirectory(prefix="m2a-gpu-check-") as tmp:
        torch.manual_seed(0)
        weights = save_weights(build_model(preset("cityscapes-r50")), None, Path(tmp) / "r50.safetensors")
        config = ProcessConfig(weights=str(weights), device=str(device), batch_size=batch, short_side=short_side,
                               precision=precision, stride=stride)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = bench_pipeline(video, config).to_dict()
        if device.type == "cuda":
            result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a dry run) [cuda].")
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="Golden folder (outputs.npz).")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="Video for the pipeline run.")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes and batches (a dry run).")
    parser.add_argument("--json", type=Path, help="Write everything here.")
    args = parser.parse_args(argv)
    print("python benchmarks/gpu_check.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])), flush=True)
    device = resolve_device(args.device)
    reduced = "fp16" if device.type == "cuda" else "bf16"
    sizes = [(64, 128)] if args.quick else [(1024, 2048), (512, 1024)]
    batches = [1, 2] if args.quick else [1, 4, 8, 16]
    short_side, batch, stride = (64, 2, 30) if args.quick else (1024, 8, 1)
    t0 = time.perf_counter()
    report = {"command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_info(), "device": str(device)}
    report["parity"] = [parity(args.golden, device, p) for p in ("fp32", reduced)]
    for p in report["parity"]:
        print(f"parity {p['precision']}: {'ok' if p['passed'] else 'FAILED'} "
              + ", ".join(f"{k} {v:.2e} (<= {p['tolerances'][k]:.0e})" for k, v in p["errors"].items()), flush=True)
    report["model"] = model_speed(device, sizes, batches, reduced, *((0, 1) if args.quick else (2, 5)))
    report["pipeline"] = pipeline_speed(device, args.video, short_side, batch, reduced, stride)
    if device.type == "cuda":
        report["peak_gpu_memory_mb"] = max([r.get("peak_memory_mb", 0.0) for r in report["model"]]
                                           + [report["pipeline"].get("peak_gpu_memory_mb", 0.0)])
        print(f"peak GPU memory {report['peak_gpu_memory_mb']:.0f} MB", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    verdict = "ok" if all(p["passed"] for p in report["parity"]) else "FAILED"
    print(f"done in {report['seconds']:.0f} s; parity {verdict}")
    return 0 if all(p["passed"] for p in report["parity"]) else 1


if __name__ == "__main__":
    sys.exit(main())
