"""The training loop of both stages, with exact resume.

``Trainer(recipe, out_dir).run()`` trains for ``solver.max_steps`` steps and writes, under
``out_dir``:

* ``recipe.json`` -- the recipe as run (:meth:`Trainer.recipe_record`: ``extends`` resolved,
  overrides applied, ``data.root`` the folder trained on), itself a loadable recipe;
* ``checkpoints/step_<n>.pt`` -- model, optimizer, schedule, gradient scaler, step, the RNG
  states of torch / CUDA / numpy / Python and the data-stream description; the newest
  ``keep_checkpoints`` are kept. Loaded with ``torch.load(weights_only=True)``;
* ``log.csv`` -- step, losses, lr, gradient norm, outlier batch, wall seconds of the step
  (data wait included; checkpoints and validation excluded) and their running total;
* ``val.csv`` -- periodic validation: AuPRC, FPR95 (anomaly score of the model, pixels of
  the val folder's ``labels_masks``) and the known-class mIoU when ``semantic/`` exists;
* the exported weights (``export.name``, safetensors with the model config).

Exact resume: batch n and the loss's point draws are functions of (seed, n) only (see
:mod:`.batches`; the torch generator of step n is seeded from (seed, n)), and everything
stateful is in the checkpoint, so resuming at step n makes the same step n + 1.
"""

from __future__ import annotations

import copy
import csv
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from m2a_pipe.config import ConfigError, ModelConfig
from m2a_pipe.inference.device import resolve_device
from m2a_pipe.inference.preprocess import normalize_and_pad
from m2a_pipe.io.layout import written_atomically
from m2a_pipe.model.checkpoint import load_into, load_weights, save_weights
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.training.batches import StepBatches
from m2a_pipe.training.data import build_dataset, build_outliers
from m2a_pipe.training.losses import LossWeights, SetCriterion
from m2a_pipe.training.matcher import HungarianMatcher
from m2a_pipe.training.optim import (
    PolySchedule,
    backbone_eval,
    clip_gradients,
    freeze_backbone,
    freeze_backbone_norms,
    param_groups,
)
from m2a_pipe.training.recipes import Recipe, model_config

CHECKPOINT_FORMAT = "m2a-pipe-train/1"
LOG_FIELDS = ("step", "loss", "ce", "mask", "dice", "aux", "outlier", "lr", "grad_norm",
              "outlier_batch", "step_s", "elapsed_s")
VAL_FIELDS = ("step", "auprc", "fpr95", "auroc", "miou", "images")


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 17) % (2**63 - 1)


def read_initial_weights(path: str | Path) -> tuple[dict, ModelConfig | None]:
    """State dict and config of ``init_weights``: m2a-pipe ``.safetensors`` or a training
    checkpoint ``.pt`` (its ``model`` and ``model_config``)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        state, cfg, _ = load_weights(path)
        return state, cfg
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ConfigError(f"{path}: not a weights file or training checkpoint")
    cfg = ModelConfig.from_dict(json.loads(ckpt["model_config"])) if "model_config" in ckpt else None
    return ckpt["model"], cfg


class Trainer:
    """One training run of a :class:`Recipe`.

    Args:
        recipe: the recipe.
        out_dir: where checkpoints, logs and the exported weights go.
        data_root: replaces ``recipe.data["root"]`` (and locates ``<data>/outliers``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: continue from the newest checkpoint in ``out_dir``.
        max_steps: stop after this step instead of ``solver.max_steps`` (the schedule still
            runs to ``solver.max_steps``, so a shortened run resumes seamlessly).
        progress: show a tqdm bar.
    """

    def __init__(self, recipe: Recipe, out_dir: str | Path, data_root: str | Path | None = None,
                 device: str = "auto", resume: bool = False, max_steps: int | None = None,
                 progress: bool = True) -> None:
        self.recipe = recipe
        self.out = Path(out_dir)
        self.device = resolve_device(device)
        self.progress = progress
        solver = recipe.solver
        self.stop_step = min(solver.max_steps, max_steps) if max_steps else solver.max_steps
        random.seed(recipe.seed)
        np.random.seed(recipe.seed % 2**32)
        torch.manual_seed(recipe.seed)

        init_state, cfg = None, None
        recipe.check_init_weights()
        if recipe.init_weights:
            init_state, cfg = read_initial_weights(recipe.init_weights)
        self.cfg = cfg or model_config(recipe.model)
        self.model = build_model(self.cfg)
        if init_state is not None:
            load_into(self.model, init_state, source=str(recipe.init_weights))
        self.model.to(self.device)
        self.frozen_bn = solver.freeze_backbone or self.cfg.backbone.norm == "FrozenBN"
        if solver.freeze_backbone:
            freeze_backbone(self.model)
        elif self.frozen_bn:
            freeze_backbone_norms(self.model)

        loss = recipe.loss
        self.criterion = SetCriterion(
            self.cfg.num_classes,
            LossWeights(loss.ce, loss.mask, loss.dice, loss.no_object, loss.outlier_weight),
            HungarianMatcher(loss.ce, loss.mask, loss.dice, loss.num_points, loss.point_padding),
            loss.num_points, loss.oversample_ratio, loss.importance_ratio, loss.deep_supervision,
            loss.outlier if recipe.stage == 2 else None, loss.margin,
            loss.outlier_resolution, hard_inlier_fraction=loss.hard_inlier_fraction,
            outlier_pixel_weight=loss.outlier_pixel_weight, point_padding=loss.point_padding,
            outlier_score=loss.outlier_score, outlier_layers=loss.outlier_layers).to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, solver.lr, solver.weight_decay, solver.backbone_multiplier),
            lr=solver.lr, weight_decay=solver.weight_decay)
        self.schedule = PolySchedule(self.optimizer, solver.max_steps, solver.poly_power)
        self.amp = solver.amp and self.device.type == "cuda"
        self.amp_dtype = torch.float16 if solver.amp_dtype == "float16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)

        data_root = data_root or recipe.data.get("root")
        self.data_root = Path(data_root) if data_root else None
        self.dataset = build_dataset(recipe.data, self.data_root)
        names = getattr(self.dataset, "class_names", None)
        if names is not None and len(names) != self.cfg.num_classes:
            raise ConfigError(f"the data has {len(names)} classes but the model {self.cfg.num_classes}")
        outliers = build_outliers(recipe.outliers, self.data_root) if recipe.stage == 2 else None
        if recipe.stage == 2 and outliers is None:
            raise ConfigError("a stage-2 recipe needs an outlier source (\"outliers\")")
        self.stream = StepBatches(self.dataset, self.cfg.num_classes, solver.batch_size, recipe.seed,
                                  recipe.augment, self.cfg.preprocess.size_divisibility, outliers,
                                  recipe.anomaly_mix, solver.max_steps)
        self.step = 0
        self.elapsed = 0.0
        if resume:
            latest = self.latest_checkpoint()
            if latest is not None:
                self.load_checkpoint(latest)

    # -- one step ---------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, float]:
        """Forward, losses, backward, clip and update for the batch of ``self.step``."""
        self.model.train()
        if self.frozen_bn:
            backbone_eval(self.model)
        lr_factor = self.schedule.set_step(self.step)
        pre = self.cfg.preprocess
        x = normalize_and_pad(batch["images"].to(self.device), pre.pixel_mean, pre.pixel_std,
                              pre.size_divisibility)
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in batch["targets"]]
        generator = torch.Generator(device=self.device).manual_seed(step_seed(self.recipe.seed, self.step))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            outputs = self.model(x)
        losses = self.criterion(outputs, targets, batch["ood"].to(self.device), generator,
                                batch["image_sizes"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.model, self.recipe.solver.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["lr"] = self.recipe.solver.lr * lr_factor
        out["grad_norm"] = grad_norm
        out["outlier_batch"] = int(batch["outlier_batch"])
        return out

    def batches(self):
        """The batches from ``self.step`` to the stop step (workers per the recipe)."""
        loader = torch.utils.data.DataLoader(self.stream, batch_size=None,
                                             sampler=range(self.step, self.stop_step),
                                             num_workers=self.recipe.num_workers)
        return iter(loader)

    def run(self) -> dict:
        """Train to the stop step; checkpoint, log, validate and export along the way."""
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.json").write_text(json.dumps(self.recipe_record(), indent=2) + "\n")
        log = self._open_log()
        bar = tqdm(total=self.stop_step, initial=self.step, disable=not self.progress,
                   desc=self.recipe.name, unit="step")
        last: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            for batch in self.batches():
                last = self.train_step(batch)
                now = time.perf_counter()
                dt, t0 = now - t0, now  # wall time of the step, waiting for data included
                self.elapsed += dt
                self.step += 1
                if self.step % max(1, self.recipe.log_every) == 0 or self.step == self.stop_step:
                    log.writerow({"step": self.step, **{k: f"{last.get(k, 0.0):.6g}" for k in LOG_FIELDS[1:-2]},
                                  "step_s": f"{dt:.3f}", "elapsed_s": f"{self.elapsed:.1f}"})
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}")
                if self.step % self.recipe.checkpoint_every == 0 or self.step == self.stop_step:
                    self.save_checkpoint()
                    t0 = time.perf_counter()
                val = self.recipe.val or {}
                final = self.step >= self.recipe.solver.max_steps  # validated below anyway
                if val.get("root") and val.get("every") and self.step % int(val["every"]) == 0 and not final:
                    self.validate()
                    t0 = time.perf_counter()
        finally:
            bar.close()
            log.close()
        summary = {"step": self.step, "last": last, "elapsed_s": self.elapsed}
        if self.step >= self.recipe.solver.max_steps:
            if (self.recipe.val or {}).get("root"):
                summary["val"] = self.validate()
            summary["weights"] = str(self.export())
        return summary

    def recipe_record(self) -> dict:
        """The recipe as this run uses it: ``recipe.to_dict()`` with ``data.root`` set to the
        folder trained on (``--data`` replaces it)."""
        spec = self.recipe.to_dict()
        if self.data_root is not None:
            spec["data"] = {**spec["data"], "root": str(self.data_root)}
        return spec

    # -- logging ----------------------------------------------------------------------
    def _open_log(self):
        path = self.out / "log.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        f = open(path, "w", newline="")
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)

        class _Log:
            def writerow(self, row):
                writer.writerow(row)
                f.flush()

            def close(self):
                f.close()
        return _Log()

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.checkpoint_dir().glob("step_*.pt"))
        return found[-1] if found else None

    def save_checkpoint(self) -> Path:
        np_state = np.random.get_state()
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "elapsed_s": self.elapsed,
            "model": self.model.state_dict(),
            "model_config": self.cfg.to_json(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                    "python": random.getstate()},
            "data": {"seed": self.recipe.seed, "batch_size": self.recipe.solver.batch_size,
                     "dataset_len": len(self.dataset), "next_step": self.step},
            "recipe": json.dumps(self.recipe_record()),
        }
        folder = self.checkpoint_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.step:08d}.pt"
        with written_atomically(path) as tmp:
            torch.save(state, tmp)
        for old in sorted(folder.glob("step_*.pt"))[:-max(1, self.recipe.keep_checkpoints)]:
            old.unlink()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        data = state["data"]
        expect = {"seed": self.recipe.seed, "batch_size": self.recipe.solver.batch_size,
                  "dataset_len": len(self.dataset)}
        diff = {k: (data[k], v) for k, v in expect.items() if data[k] != v}
        if diff:
            raise ConfigError(f"{path}: data stream differs from the recipe/data (checkpoint, now): {diff}")
        load_into(self.model, state["model"], source=str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed_s", 0.0))

    # -- validation and export ----------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """AuPRC / FPR95 (and mIoU when ``semantic/`` exists) on the recipe's val folder."""
        from m2a_pipe.evaluation.datasets import detect_dataset, read_image, read_label
        from m2a_pipe.evaluation.pixel import PixelAccumulator
        from m2a_pipe.inference.predictor import Predictor

        val = self.recipe.val or {}
        root = Path(val["root"])
        dataset = detect_dataset(root)
        samples = dataset.samples[: int(val.get("max_images", len(dataset.samples)))]
        model = copy.deepcopy(self.model).float()
        # float32 unless the recipe says otherwise: held-out figures comparable across machines and runs
        predictor = Predictor(model, self.device, resize=bool(val.get("resize", True)),
                              score=val.get("score", "official"), precision=val.get("precision", "fp32"))
        acc = PixelAccumulator()
        k = self.cfg.num_classes
        confusion = np.zeros((k, k), dtype=np.int64)
        with_semantic = False
        for s in samples:
            result = predictor(read_image(s.image))
            acc.add(result.anomaly, read_label(s.label, s.mapping))
            sem_path = root / "semantic" / f"{s.stem}.png"
            if sem_path.is_file():
                with_semantic = True
                from PIL import Image
                gt = np.array(Image.open(sem_path)).astype(np.int64)
                ok = gt < k
                confusion += np.bincount(gt[ok] * k + result.semantic[ok].astype(np.int64),
                                         minlength=k * k).reshape(k, k)
        m = acc.result()
        miou = float("nan")
        if with_semantic:
            inter = np.diag(confusion)
            union = confusion.sum(0) + confusion.sum(1) - inter
            present = confusion.sum(1) > 0
            miou = float(np.mean(inter[present] / np.maximum(union[present], 1)))
        row = {"step": self.step, "auprc": m.auprc, "fpr95": m.fpr95, "auroc": m.auroc,
               "miou": miou, "images": len(samples)}
        path = self.out / "val.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=VAL_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        return row

    def export(self) -> Path:
        """Write the final weights (safetensors + config) with ``save_weights``."""
        exp = self.recipe.export or {}
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(exp.get("dtype", "float32"))
        meta = {"recipe": self.recipe.name, "stage": self.recipe.stage, "steps": self.step,
                "seed": self.recipe.seed, "train_seconds": round(self.elapsed, 1)}
        return save_weights(self.model, self.cfg, self.out / exp.get("name", "final.safetensors"),
                            meta, float_dtype=dtype)
