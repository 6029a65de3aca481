"""Training-loss parity with the official Mask2Anomaly criterion (``-k train_parity``).

Reads the golden set in ``$M2A_TRAIN_GOLDEN_DIR`` (default ``../shared/golden/train_a``
relative to the repository root; its README says how it was made): predictions of every
output, the targets of both stages, every uniform draw of the official code in call order,
and what the official criterion returned. The dimensions (batch, outputs, points, classes)
are read from the folder. In the ``official`` loss mode every loss term of every output, the
matching, the cost matrices, the importance-sampled points, the total and the gradients must
agree within float32 tolerances.

``python tests/test_train_parity.py`` prints each term in the ``project`` mode against the
official value (docs/TRAINING.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from m2a_pipe.training.losses import LOSS_MODES, LossWeights, SetCriterion
from m2a_pipe.training.matcher import HungarianMatcher, hungarian
from m2a_pipe.training.points import RecordedDraws, importance_points

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("M2A_TRAIN_GOLDEN_DIR", REPO.parent / "shared" / "golden" / "train_a"))
FILES = ("README.md", "inputs.npz", "points.json", "points.npz", "expected.json",
         "expected_grads.npz", "expected_costs.npz")
STAGES = ("stage1", "stage2")
TERMS = {"ce": "loss_ce", "mask": "loss_mask", "dice": "loss_dice", "outlier": "loss_ood"}

needs_golden = pytest.mark.skipif(
    not all((GOLDEN / f).is_file() for f in FILES),
    reason=f"no training golden set at {GOLDEN} (set M2A_TRAIN_GOLDEN_DIR)")


class Golden:
    """The golden folder, its dimensions discovered from the files."""

    def __init__(self, root: Path) -> None:
        self.inputs = dict(np.load(root / "inputs.npz"))
        self.points = json.loads((root / "points.json").read_text())
        self.draws = dict(np.load(root / "points.npz"))
        self.expected = json.loads((root / "expected.json").read_text())["stages"]
        self.grads = dict(np.load(root / "expected_grads.npz"))
        self.costs = dict(np.load(root / "expected_costs.npz"))
        self.layers = list(self.points["layer_call_order"])
        self.batch = int(self.inputs["image_sizes"].shape[0])
        self.num_classes = int(self.inputs["final_pred_logits"].shape[-1]) - 1
        self.num_points = int(self.points["num_points"])

    def outputs(self) -> dict:
        """The model outputs as leaf tensors that collect gradients."""
        def leaf(key):
            return torch.tensor(self.inputs[key]).requires_grad_(True)
        layer = {name: {"pred_logits": leaf(f"{name}_pred_logits"), "pred_masks": leaf(f"{name}_pred_masks")}
                 for name in self.layers}
        return {**layer["final"], "aux_outputs": [layer[name] for name in self.layers[1:]]}

    def targets(self, stage: str) -> list[dict]:
        return [{"labels": torch.tensor(self.inputs[f"{stage}_labels_b{b}"]),
                 "masks": torch.tensor(self.inputs[f"{stage}_masks_b{b}"])} for b in range(self.batch)]

    def ood(self, stage: str) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The outlier mask as the project's batches carry it: (B, Hp, Wp) uint8, 1 on the
        pasted object, 0 elsewhere in the crop, 255 on the padding; and the crop sizes."""
        sizes = torch.tensor(self.inputs["image_sizes"]).long()
        if f"{stage}_ood_mask_b0" not in self.inputs:
            return None, sizes
        hp, wp = (int(v) for v in self.inputs["padded_size"])
        ood = torch.full((self.batch, hp, wp), 255, dtype=torch.uint8)
        for b in range(self.batch):
            m = torch.tensor(self.inputs[f"{stage}_ood_mask_b{b}"][0])
            ood[b, : m.shape[0], : m.shape[1]] = m.to(torch.uint8)
        return ood, sizes

    def recorded(self, stage: str, **where) -> RecordedDraws:
        """The stage's draws in call order (only the calls matching ``where``)."""
        calls = sorted(self.points["stages"][stage]["calls"], key=lambda c: c["call"])
        calls = [c for c in calls if all(c.get(k) == v for k, v in where.items())]
        return RecordedDraws([self.draws[c["key"]] for c in calls])

    def criterion(self, stage: str, mode: str = "official") -> SetCriterion:
        cfg = self.expected[stage]["config"]
        opts = dict(LOSS_MODES[mode])
        if mode == "official":
            opts["margin"] = cfg["MARGIN"]
        outlier = "contrastive" if cfg["OOD_FINETUNE"] else None
        m = cfg["matcher"]
        return SetCriterion(
            self.num_classes,
            LossWeights(cfg["CLASS_WEIGHT"], cfg["MASK_WEIGHT"], cfg["DICE_WEIGHT"], cfg["NO_OBJECT_WEIGHT"],
                        cfg["OOD_WEIGHT"]),
            HungarianMatcher(m["cost_class"], m["cost_mask"], m["cost_dice"], m["num_points"],
                             opts["point_padding"]),
            cfg["TRAIN_NUM_POINTS"], cfg["OVERSAMPLE_RATIO"], cfg["IMPORTANCE_SAMPLE_RATIO"],
            cfg["DEEP_SUPERVISION"], outlier, opts["margin"], opts["outlier_resolution"],
            point_padding=opts["point_padding"], outlier_score=opts["outlier_score"],
            outlier_layers=opts["outlier_layers"])

    def run(self, stage: str, mode: str = "official") -> tuple[list[dict], RecordedDraws]:
        ood, sizes = self.ood(stage)
        draws = self.recorded(stage)
        terms = self.criterion(stage, mode).per_output(self.outputs(), self.targets(stage), ood, sizes, draws)
        return terms, draws


def raw_key(term: str, layer: str) -> str:
    return TERMS[term] if layer == "final" else f"{TERMS[term]}_{layer.split('_')[1]}"


@pytest.fixture(scope="module")
def golden() -> Golden:
    return Golden(GOLDEN)


@needs_golden
@pytest.mark.parametrize("stage", STAGES)
def test_train_parity_terms_and_matching(golden, stage):
    expected = golden.expected[stage]
    terms, draws = golden.run(stage)
    assert draws.used == len(draws.arrays)  # every recorded draw used, in order and shape
    assert [t["name"] for t in terms] == golden.layers
    raw = expected["criterion_output_raw"]
    seen = set()
    for t in terms:
        for term in ("ce", "mask", "dice", "outlier"):
            key = raw_key(term, t["name"])
            if key in raw or term in t:
                assert term in t and key in raw, f"{stage} {t['name']} {term}: present on one side only"
                got = float(t[term].detach())
                assert got == pytest.approx(raw[key], rel=1e-5, abs=1e-6), f"{stage} {key}: {got} vs {raw[key]}"
                seen.add(key)
        for b, (src, tgt) in enumerate(t["indices"]):
            want = expected["matching"][t["name"]][b]
            assert src.tolist() == want["pred"] and tgt.tolist() == want["tgt"], f"{stage} {t['name']} image {b}"
    assert seen == set(raw)


@needs_golden
@pytest.mark.parametrize("stage", STAGES)
def test_train_parity_total_and_gradients(golden, stage):
    ood, sizes = golden.ood(stage)
    outputs = golden.outputs()
    losses = golden.criterion(stage)(outputs, golden.targets(stage), ood, golden.recorded(stage), sizes)
    assert float(losses["loss"].detach()) == pytest.approx(golden.expected[stage]["total_weighted_loss"], rel=1e-5)
    losses["loss"].backward()
    layers = dict(zip(golden.layers, [outputs, *outputs["aux_outputs"]]))
    for name, layer in layers.items():
        for key in ("pred_logits", "pred_masks"):
            want = torch.tensor(golden.grads[f"{stage}__{name}__{key}"])
            diff = float((layer[key].grad - want).abs().max())
            assert diff <= 1e-4 * float(want.abs().max()), f"{stage} {name} {key}: max |diff| {diff:.3g}"


@needs_golden
@pytest.mark.parametrize("stage", STAGES)
def test_train_parity_cost_matrices_and_importance_points(golden, stage):
    outputs = golden.outputs()
    layers = dict(zip(golden.layers, [outputs, *outputs["aux_outputs"]]))
    targets = golden.targets(stage)
    matcher = golden.criterion(stage).matcher
    terms, _ = golden.run(stage)
    for name, layer in layers.items():
        for b, target in enumerate(targets):
            draws = golden.recorded(stage, layer=name, image=b, purpose="matcher_points")
            cost = matcher.cost_matrix(layer["pred_logits"][b].detach(), layer["pred_masks"][b].detach(),
                                       target["labels"], target["masks"], draws)
            want = torch.tensor(golden.costs[f"{stage}__{name}__cost_b{b}"])
            assert torch.allclose(cost, want, rtol=0, atol=1e-5), f"{stage} {name} image {b}"
            assert hungarian(cost)[0].tolist() == hungarian(want)[0].tolist()
        # the loss points: candidates, top-k by uncertainty, uniform part
        indices = next(t["indices"] for t in terms if t["name"] == name)
        src = torch.cat([layer["pred_masks"][b, s] for b, (s, _) in enumerate(indices)]).detach()
        cand = golden.draws[f"{name}__masks_oversample"]
        uniform = golden.draws[f"{name}__masks_random"]
        coords = importance_points(src, golden.num_points, 3.0, 0.75, RecordedDraws([cand, uniform]))
        idx = golden.draws[f"{stage}__{name}__masks_importance_idx"].astype(np.int64)
        want = np.concatenate([np.take_along_axis(cand, idx[..., None], 1), uniform], axis=1)
        assert np.array_equal(coords.numpy(), want), f"{stage} {name}: importance-sampled points differ"


@needs_golden
def test_train_parity_detects_the_project_mode(golden):
    """Negative control: the project's choices (border padding, 1 - g, margin 0.75, the 1/4
    grid, the last output) move the terms far beyond the tolerances."""
    rows = {(stage, key): (official, project) for stage, key, official, project in project_table(golden)}
    official, project = rows[("stage1", "loss_mask")]
    assert abs(project / official - 1) > 0.01
    official, project = rows[("stage2", "loss_ood")]
    assert abs(project / official - 1) > 0.5
    assert all(p != p for (stage, key), (_, p) in rows.items() if key.startswith("loss_ood_"))


def test_train_parity_replay_refuses_a_wrong_shape():
    draws = RecordedDraws([np.zeros((1, 4, 2), np.float32)])
    with pytest.raises(ValueError, match="recorded shape"):
        draws.take((1, 5, 2))
    draws.take((1, 4, 2))
    with pytest.raises(ValueError, match="only 1 recorded"):
        draws.take((1, 4, 2))


def project_table(golden: Golden) -> list[tuple[str, str, float, float]]:
    """(stage, official key, official value, project-mode value) for every official term."""
    rows = []
    for stage in STAGES:
        raw = golden.expected[stage]["criterion_output_raw"]
        terms, _ = golden.run(stage, "project")
        got = {raw_key(term, t["name"]): float(t[term].detach()) for t in terms for term in TERMS if term in t}
        rows += [(stage, key, value, got.get(key, float("nan"))) for key, value in raw.items()]
    return rows


if __name__ == "__main__":
    print("| stage | term | official | project mode | project / official |")
    print("|---|---|---|---|---|")
    for stage, key, official, project in project_table(Golden(GOLDEN)):
        ratio = project / official if official and project == project else float("nan")
        shown = "not computed" if project != project else f"{project:.6g}"
        print(f"| {stage} | {key} | {official:.6g} | {shown} | {ratio:.4f} |")
