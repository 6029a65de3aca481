"""``m2a-pipe bench model``: per-frame latency and peak memory of the network.

Times the forward pass stage by stage (backbone, pixel decoder, transformer decoder) and
the official full-resolution semantic inference that the anomaly map needs, on random
weights of a preset (speed does not depend on the weight values) and a random input, in
one or more precisions (``fp32``, ``bf16``, ``fp16``, ``auto``; see
:func:`m2a_pipe.inference.forward.precision_for`). Several precisions are measured
interleaved in one process (run 1 of each, then run 2 of each, ...), so that a machine's
changing load falls on all of them alike and their ratio is meaningful even when the
absolute times are not; the process CPU time of each run is recorded too (with one thread
it is the figure least disturbed by other processes). Reports medians over the repeats after warm-up, the peak memory
(resident set size of the process on CPU, ``max_memory_allocated`` on CUDA), and what is
needed to re-measure: the CPU, its bfloat16 instructions, torch's version, the threads and
the load average before and after.

``unoptimised=True`` runs the same network without this project's optimisations (batch norm
not folded, the straightforward deformable-attention core, every layer's masks at full
resolution, all masks upsampled at once; float32). It is not the official implementation:
the official code measured 12-16 % slower still on the same CPU.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from m2a_pipe.bench.memory import peak_rss_mb
from m2a_pipe.config import ModelConfig
from m2a_pipe.inference.forward import ForwardCore, cpu_has_native_bf16
from m2a_pipe.inference.predictor import full_resolution_semantic
from m2a_pipe.inference.preprocess import normalize_and_pad
from m2a_pipe.inference.scoring import official_semantic_inference
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.model.ms_deform_attn import use_reference_core

STAGES = ("backbone", "pixel_decoder", "transformer_decoder", "semantic_inference")


@dataclass
class BenchResult:
    """Figures of one precision's runs; times in seconds per frame."""

    preset: str
    device: str
    height: int
    width: int
    batch: int
    threads: int
    unoptimised: bool
    precision: str
    repeats: int
    stage_median_s: dict[str, float] = field(default_factory=dict)
    total_median_s: float = 0.0
    total_min_s: float = 0.0
    total_max_s: float = 0.0
    totals_s: list[float] = field(default_factory=list)
    cpu_totals_s: list[float] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    parameters: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{self.preset} on {self.device}: {self.batch}x3x{self.height}x{self.width}, "
                 f"{self.threads} threads, {'unoptimised' if self.unoptimised else 'optimised'}, "
                 f"{self.precision}, {self.parameters:,} parameters, median of {self.repeats}"]
        for stage in STAGES:
            t = self.stage_median_s[stage]
            lines.append(f"  {stage:22s} {t * 1000:9.1f} ms/frame  {100 * t / self.total_median_s:5.1f} %")
        lines.append(f"  {'total':22s} {self.total_median_s * 1000:9.1f} ms/frame  "
                     f"(min {self.total_min_s * 1000:.1f}, max {self.total_max_s * 1000:.1f}); "
                     f"{1 / self.total_median_s:.2f} frames/s; CPU time "
                     f"{statistics.median(self.cpu_totals_s) * 1000:.1f} ms/frame (all threads)")
        lines.append(f"  peak memory {self.peak_memory_mb:.0f} MB "
                     f"({'max allocated' if self.device.startswith('cuda') else 'process RSS, all precisions so far'})")
        return "\n".join(lines)


def machine_info() -> dict:
    """What a figure depends on besides the code: CPU model, bfloat16 instructions, torch,
    threads, the load average (Linux) and the CUDA device when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "cpu_native_bf16": cpu_has_native_bf16(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


@dataclass
class Runner:
    """One precision's prepared network and its stage-by-stage timed run."""

    name: str
    model: torch.nn.Module
    core: ForwardCore | None
    unoptimised: bool

    def run_once(self, images: torch.Tensor, sync: Callable[[], None]) -> dict[str, float]:
        """Per-frame seconds of each stage for one batch of (B, 3, H, W) uint8 images."""
        batch, _, height, width = images.shape
        cfg = self.model.config
        pre = cfg.preprocess
        context = self.core.precision.context() if self.core else torch.autocast("cpu", enabled=False)
        dtype = self.core.precision.weights_dtype if self.core else torch.float32
        with torch.inference_mode(), context:
            x = normalize_and_pad(images, pre.pixel_mean, pre.pixel_std, pre.size_divisibility).to(dtype)
            if self.core:
                x = x.contiguous(memory_format=torch.channels_last)
            sync()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            feats = self.model.backbone(x)
            sync()
            t1 = time.perf_counter()
            mask_features, _, multi_scale = self.model.sem_seg_head.pixel_decoder.forward_features(feats)
            sync()
            t2 = time.perf_counter()
            out = self.model.sem_seg_head.predictor(multi_scale, mask_features, final_masks_only=not self.unoptimised)
            sync()
            t3 = time.perf_counter()
            for logits, masks in zip(out["pred_logits"].float(), out["pred_masks"].float()):
                if self.unoptimised:
                    up = F.interpolate(masks[None], size=(height, width), mode="bilinear", align_corners=False)[0]
                    official_semantic_inference(logits, up, cfg.refine_ids, cfg.keep_threshold)
                else:
                    full_resolution_semantic(logits, masks, cfg.refine_ids, cfg.keep_threshold)
            sync()
            t4 = time.perf_counter()
            cpu = time.process_time() - cpu0
        times = {stage: (b - a) / batch for stage, (a, b) in zip(STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)))}
        return {**times, "cpu": cpu / batch}


def bench_model(cfg: ModelConfig, *, preset: str = "custom", height: int = 512, width: int = 1024,
                device: str = "cpu", batch: int = 1, warmup: int = 1, repeats: int = 5,
                threads: int | None = None, unoptimised: bool = False,
                precisions: Sequence[str] = ("auto",),
                progress: Callable[[str], None] | None = None) -> list[BenchResult]:
    """Time forward + full-resolution semantic inference of ``cfg`` on a random input, once
    per precision of ``precisions`` (interleaved; ``unoptimised`` runs float32 whatever is
    asked); the input is padded to the preset's size divisibility as in inference."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    base = build_model(cfg).eval()
    runners = []
    for name in precisions:
        model = copy.deepcopy(base).to(dev)
        if unoptimised:
            use_reference_core(model, True)
            runners.append(Runner("fp32", model, None, True))
        else:
            core = ForwardCore(model, dev, precision=name)
            runners.append(Runner(core.precision.name, core.model, core, False))
    del base
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(warmup):
        for r in runners:
            if progress:
                progress(f"warm-up {i + 1}/{warmup} {r.name}")
            r.run_once(images, sync)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runs: list[list[dict[str, float]]] = [[] for _ in runners]
    for i in range(repeats):
        for r, out in zip(runners, runs):
            if progress:
                progress(f"run {i + 1}/{repeats} {r.name}")
            out.append(r.run_once(images, sync))
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_mb())
    results = []
    for r, rr in zip(runners, runs):
        totals = [sum(x[s] for s in STAGES) for x in rr]
        results.append(BenchResult(
            preset=preset, device=str(dev), height=height, width=width, batch=batch,
            threads=torch.get_num_threads(), unoptimised=unoptimised, precision=r.name, repeats=repeats,
            stage_median_s={s: statistics.median(x[s] for x in rr) for s in STAGES},
            total_median_s=statistics.median(totals), total_min_s=min(totals), total_max_s=max(totals),
            totals_s=[round(t, 4) for t in totals], cpu_totals_s=[round(x["cpu"], 4) for x in rr],
            peak_memory_mb=peak,
            parameters=sum(p.numel() for p in r.model.parameters())))
    return results


def speed_ratios(results: Sequence[BenchResult], cpu: bool = False) -> dict[str, float]:
    """Median speed-up of each precision over the first one, from the paired runs
    (``"bf16/fp32": 2.1`` means bf16 took 1/2.1 of fp32's time, median of per-run ratios);
    ``cpu``: of the process CPU time instead of the wall time (with one thread, the figure
    least disturbed by other processes on a busy machine)."""
    first = results[0]
    key = "cpu_totals_s" if cpu else "totals_s"
    return {f"{r.precision}/{first.precision}": round(statistics.median(
        a / b for a, b in zip(getattr(first, key), getattr(r, key))), 3) for r in results[1:]}
