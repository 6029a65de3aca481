"""The model stage: maps of the right size that agree with the Predictor's official path, and
the forward core it shares with the Predictor."""

import numpy as np
import pytest
import torch

from m2a_pipe.config import preset
from m2a_pipe.errors import UsageError
from m2a_pipe.inference import forward as core_module
from m2a_pipe.inference.forward import ForwardCore, precision_for, upsample_map
from m2a_pipe.inference.predictor import Predictor
from m2a_pipe.inference.stage import ModelStage, map_size, network_input_size, prepare_frame
from m2a_pipe.model.loading import load_model
from m2a_pipe.model.mask2anomaly import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(preset("small"))


def frames(n, h=96, w=160, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_map_shapes_and_dtypes(model):
    stage = ModelStage(model, "cpu")
    out = stage(frames(2, 90, 150))
    assert len(out) == 2
    assert out[0].anomaly.shape == map_size((90, 150), 4) == (23, 38)
    assert out[0].anomaly.dtype == np.float32 and out[0].semantic.dtype == np.uint8
    assert out[0].semantic.max() < model.config.num_classes


def test_full_resolution_official_map_equals_the_predictor(model):
    imgs = frames(2)
    stage = ModelStage(model, "cpu", map_stride=1)
    predictor = Predictor(model, "cpu", resize=False)
    for maps, result in zip(stage(imgs), predictor(imgs)):
        np.testing.assert_allclose(maps.anomaly, result.anomaly, atol=1e-5)
        assert (maps.semantic == result.semantic).mean() > 0.999


def stage_map_at_image(maps, size, map_stride):
    """A stage map at the image size, upsampled exactly as the Predictor does it."""
    return upsample_map(torch.from_numpy(maps.anomaly)[None], size, map_stride, size)[0].numpy()


@pytest.mark.parametrize("map_stride", [4, 2])
@pytest.mark.parametrize("score", ["official", "msp", "energy"])
def test_predictor_at_map_stride_4_or_2_is_the_stage_map_upsampled(model, score, map_stride):
    for h, w in ((96, 160), (90, 150)):  # no padding; padding (a map cell past the image edge)
        imgs = frames(2, h, w, seed=3)
        stage = ModelStage(model, "cpu", score=score, map_stride=map_stride)
        predictor = Predictor(model, "cpu", resize=False, score=score, map_stride=map_stride)
        fine = Predictor(model, "cpu", resize=False, score=score)
        for maps, result, full in zip(stage(imgs), predictor(imgs), fine(imgs)):
            assert np.array_equal(result.anomaly, stage_map_at_image(maps, (h, w), map_stride))
            if map_stride == 4 and h % 32 == 0:  # the grid map upsampled by plain interpolation
                up = torch.nn.functional.interpolate(torch.from_numpy(maps.anomaly)[None, None], scale_factor=4,
                                                     mode="bilinear", align_corners=False)[0, 0].numpy()
                np.testing.assert_allclose(result.anomaly, up, atol=1e-6)
            assert not np.allclose(result.anomaly, full.anomaly, atol=1e-3)  # a different map than stride 1
            np.testing.assert_array_equal(result.semantic, full.semantic)  # semantic stays official


def test_predictor_and_stage_share_the_forward_core_on_the_demo_weights():
    demo = load_model("demo")
    img = frames(1, 128, 256, seed=5)[0]
    stage = ModelStage(demo, "cpu", score="official", map_stride=4)
    predictor = Predictor(demo, "cpu", resize=False, score="official", map_stride=4)
    assert isinstance(stage.core, ForwardCore) and isinstance(predictor.core, ForwardCore)
    maps = stage([img])[0]
    result = predictor(img)
    assert np.array_equal(result.anomaly, stage_map_at_image(maps, img.shape[:2], 4))
    out = predictor.forward([img])  # the same network outputs through both
    logits, masks = stage.core(stage.core.batch([img]))
    assert torch.equal(out["pred_logits"], logits) and torch.equal(out["pred_masks"], masks)
    # with flip the Predictor averages the two upsampled maps (at the image size), the stage
    # averages at the grid: equal up to float rounding where the map cells tile the image
    flipped = ModelStage(demo, "cpu", flip=True)([img])[0]
    result = Predictor(demo, "cpu", resize=False, map_stride=4, flip=True)(img)
    np.testing.assert_allclose(result.anomaly, stage_map_at_image(flipped, img.shape[:2], 4), atol=1e-6)


def test_both_users_follow_the_one_precision_rule(model, monkeypatch, tmp_path):
    native = core_module.cpu_has_native_bf16()
    assert precision_for("cuda").name == "fp16" and precision_for("cuda").autocast
    assert precision_for(torch.device("cuda", 1)).dtype == torch.float16
    assert precision_for("cpu").name == ("bf16" if native else "fp32")
    assert precision_for("meta").name == "fp32" and not precision_for("meta").autocast
    assert precision_for("cuda", "fp32").name == "fp32" and not precision_for("cuda", "fp32").autocast
    bf16 = precision_for("cpu", "bf16")
    assert bf16.weights_dtype == torch.bfloat16 and not bf16.autocast  # weights converted, no autocast
    assert precision_for("cuda", "bf16").autocast and precision_for("cuda", "bf16").weights_dtype == torch.float32
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        precision_for("cpu", "fp16")
    with pytest.raises(UsageError, match="--precision 'half'"):
        precision_for("cpu", "half")
    assert ModelStage(model, "cpu").core.precision == Predictor(model, "cpu").core.precision == precision_for("cpu")
    asked = []
    monkeypatch.setattr(core_module, "precision_for", lambda device, precision="auto": asked.append(
        (torch.device(device).type, precision)) or core_module.Precision("cpu", "fp32"))
    ModelStage(model, "cpu")
    Predictor(model, "cpu")
    ModelStage(model, "cpu", precision="fp32")
    assert asked == [("cpu", "auto"), ("cpu", "auto"), ("cpu", "fp32")]


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_vnni\n")
    assert not core_module.cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert core_module.cpu_has_native_bf16(info)
    info.write_text("flags\t\t: fpu amx_tile amx_bf16\n")
    assert core_module.cpu_has_native_bf16(info)
    assert not core_module.cpu_has_native_bf16(tmp_path / "absent")


def test_fp32_keeps_float32_and_bf16_converts_a_copy(model):
    core = ForwardCore(model, "cpu", precision="fp32")
    with core.precision.context():
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    logits, masks = core(core.batch(frames(1, 64, 64)))
    assert logits.dtype == masks.dtype == torch.float32
    assert masks.shape[-2:] == (16, 16)
    bf16 = ForwardCore(model, "cpu", precision="bf16")
    assert bf16.model is not model and model.backbone.stem.conv1.weight.dtype == torch.float32
    assert bf16.model.backbone.stem.conv1.weight.dtype == torch.bfloat16
    assert bf16.model.sem_seg_head.pixel_decoder.mask_features.weight.dtype == torch.bfloat16
    assert bf16.model.sem_seg_head.predictor.class_embed.weight.dtype == torch.float32
    logits16, masks16 = bf16(bf16.batch(frames(1, 64, 64)))
    assert logits16.dtype == masks16.dtype == torch.float32
    # reduced precision, same network: close, not equal (the golden tests bound the error)
    assert 0 < (masks16 - masks).abs().max() < 0.1 * masks.abs().max()


def test_map_stride_is_checked(model):
    with pytest.raises(ValueError, match="map_stride"):
        Predictor(model, "cpu", map_stride=3)
    with pytest.raises(ValueError, match="map_stride"):
        ModelStage(model, "cpu", map_stride=8)


def test_batch_equals_single_frames(model):
    imgs = frames(3, seed=1)
    stage = ModelStage(model, "cpu")
    batched = stage(imgs)
    for img, b in zip(imgs, batched):
        np.testing.assert_allclose(stage([img])[0].anomaly, b.anomaly, atol=1e-5)


def test_flip_averages_the_mirrored_pass(model):
    (img,) = frames(1, seed=2)
    plain = ModelStage(model, "cpu", score="msp")([img])[0].anomaly
    mirrored = ModelStage(model, "cpu", score="msp")([np.ascontiguousarray(img[:, ::-1])])[0].anomaly
    flipped = ModelStage(model, "cpu", score="msp", flip=True)([img])[0].anomaly
    np.testing.assert_allclose(flipped, (plain + mirrored[:, ::-1]) / 2, atol=1e-5)


def test_unknown_score_and_mixed_sizes_are_errors(model):
    with pytest.raises(ValueError, match="unknown score"):
        ModelStage(model, "cpu", score="nope")
    with pytest.raises(ValueError, match="one size"):
        ModelStage(model, "cpu")([*frames(1, 64, 64), *frames(1, 96, 96)])


def test_input_size_follows_the_official_resize():
    assert network_input_size(1080, 1920, 512, 1024) == (512, 910)
    assert network_input_size(1080, 1920, 1024, 2048) == (1024, 1820)
    assert prepare_frame(np.zeros((1080, 1920, 3), np.uint8), (512, 910)).shape == (512, 910, 3)


def test_mined_unknown_instances_match_the_open_set_panoptic_of_the_predictor(model):
    from m2a_pipe.inference.instances import full_mask

    imgs = frames(2, seed=3)
    stage = ModelStage(model, "cpu", map_stride=1, mine_unknown=True)
    predictor = Predictor(model, "cpu", resize=False)
    k = model.config.num_classes
    for maps, result in zip(stage(imgs), predictor(imgs)):
        panoptic, info = predictor.panoptic(result)
        unknown_ids = [s["id"] for s in info if s["category_id"] == k]
        assert len(maps.unknown) == len(unknown_ids) > 0
        painted = np.isin(panoptic, unknown_ids)
        mined = np.any([full_mask(u, panoptic.shape) for u in maps.unknown], axis=0)
        assert not (painted & ~mined).any()  # every unknown pixel of the panoptic map was mined
    assert all(maps.unknown is None for maps in ModelStage(model, "cpu")(imgs))
