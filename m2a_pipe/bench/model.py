"""``m2a-pipe bench model``: per-frame latency and peak memory of the network.

Times the forward pass stage by stage (backbone, pixel decoder, transformer decoder) and
the official full-resolution semantic inference that the anomaly map needs, on random
weights of a preset (speed does not depend on the weight values) and a random input.
Reports medians over repeated runs after warm-up, and the peak memory: resident set size of
the process on CPU, ``max_memory_allocated`` on CUDA.

``baseline=True`` runs the same network the way the official implementation does (batch
norm not folded, the straightforward deformable-attention core, all masks upsampled at
once), so a speed-up can be measured on the machine at hand.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from m2a_pipe.bench.memory import peak_rss_mb
from m2a_pipe.config import ModelConfig
from m2a_pipe.inference.predictor import full_resolution_semantic
from m2a_pipe.inference.scoring import official_semantic_inference
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.model.ms_deform_attn import use_reference_core

STAGES = ("backbone", "pixel_decoder", "transformer_decoder", "semantic_inference")


@dataclass
class BenchResult:
    """Figures of one benchmark run; times in seconds per frame."""

    preset: str
    device: str
    height: int
    width: int
    batch: int
    threads: int
    baseline: bool
    amp: bool
    repeats: int
    stage_median_s: dict[str, float] = field(default_factory=dict)
    total_median_s: float = 0.0
    total_min_s: float = 0.0
    total_max_s: float = 0.0
    peak_memory_mb: float = 0.0
    parameters: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{self.preset} on {self.device}: {self.batch}x3x{self.height}x{self.width}, "
                 f"{self.threads} threads, {'baseline' if self.baseline else 'optimised'}"
                 f"{', bf16 autocast' if self.amp else ''}, {self.parameters:,} parameters, "
                 f"median of {self.repeats}"]
        for stage in STAGES:
            t = self.stage_median_s[stage]
            lines.append(f"  {stage:22s} {t * 1000:9.1f} ms/frame  {100 * t / self.total_median_s:5.1f} %")
        lines.append(f"  {'total':22s} {self.total_median_s * 1000:9.1f} ms/frame  "
                     f"(min {self.total_min_s * 1000:.1f}, max {self.total_max_s * 1000:.1f}); "
                     f"{1 / self.total_median_s:.2f} frames/s")
        lines.append(f"  peak memory {self.peak_memory_mb:.0f} MB "
                     f"({'max allocated' if self.device.startswith('cuda') else 'process RSS'})")
        return "\n".join(lines)


def bench_model(cfg: ModelConfig, *, preset: str = "custom", height: int = 512, width: int = 1024,
                device: str = "cpu", batch: int = 1, warmup: int = 1, repeats: int = 5,
                threads: int | None = None, baseline: bool = False, amp: bool = False,
                progress: Callable[[str], None] | None = None) -> BenchResult:
    """Time forward + full-resolution semantic inference of ``cfg`` on a random input."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev).eval()
    use_reference_core(model, baseline)  # this model only
    if not baseline:
        model.prepare_for_inference()
    x = torch.randn(batch, 3, height, width, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg_ = model.config

    def semantic(out: dict) -> None:
        for logits, masks in zip(out["pred_logits"].float(), out["pred_masks"].float()):
            if baseline:
                up = F.interpolate(masks[None], size=(height, width), mode="bilinear",
                                   align_corners=False)[0]
                official_semantic_inference(logits, up, cfg_.refine_ids, cfg_.keep_threshold)
            else:
                full_resolution_semantic(logits, masks, cfg_.refine_ids, cfg_.keep_threshold)

    def run_once() -> dict[str, float]:
        times: dict[str, float] = {}
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            t0 = time.perf_counter()
            feats = model.backbone(x)
            sync()
            t1 = time.perf_counter()
            mask_features, _, multi_scale = model.sem_seg_head.pixel_decoder.forward_features(feats)
            sync()
            t2 = time.perf_counter()
            out = model.sem_seg_head.predictor(multi_scale, mask_features)
            sync()
            t3 = time.perf_counter()
            semantic(out)
            sync()
            t4 = time.perf_counter()
        for stage, (a, b) in zip(STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
            times[stage] = (b - a) / batch
        return times

    for i in range(warmup):
        if progress:
            progress(f"warm-up {i + 1}/{warmup}")
        run_once()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runs = []
    for i in range(repeats):
        if progress:
            progress(f"run {i + 1}/{repeats}")
        runs.append(run_once())
    totals = [sum(r.values()) for r in runs]
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_mb())
    return BenchResult(
        preset=preset, device=str(dev), height=height, width=width, batch=batch,
        threads=torch.get_num_threads(), baseline=baseline, amp=amp, repeats=repeats,
        stage_median_s={s: statistics.median(r[s] for r in runs) for s in STAGES},
        total_median_s=statistics.median(totals), total_min_s=min(totals), total_max_s=max(totals),
        peak_memory_mb=peak, parameters=sum(p.numel() for p in model.parameters()),
    )
