"""The faceres-deep backbone: conversion from the original files, its preprocessing, a training run from the
pretrained start, multi-fake pair sampling, and the too-small-face rule."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.backbones import (
    FACERES_SHA256,
    SameConv2d,
    faceres_state,
    load_faceres_identity,
    read_tfjs_weights,
)
from pipeline.errors import ModelLoadError
from pipeline.model import ARCHITECTURE_DEFAULTS, FaceResNet, ModelMetadata, crops_to_tensor, load_classifier
from pipeline.training.augment import AugmentConfig
from pipeline.training.data import Pair, RealWithFakes, Sample, epoch_pairs, group_by_real, unpaired_pairs
from pipeline.training.train import TrainConfig, Trainer, param_groups

PRETRAINED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pretrained"
needs_pretrained = pytest.mark.skipif(not (PRETRAINED / "faceres-deep.bin").is_file(),
                                      reason="../shared/data/pretrained is not present")
# data/pretrained/README.md: P(male) of the gender head on facenet-pytorch MTCNN boxes (no margin) cut from
# two skimage.data photos and resized to 224 with PIL bilinear. Given to three decimals; how the box is
# rounded to pixels moves the first by about 0.002.
REFERENCE_P_MALE = {"astronaut": 0.028, "camera": 0.929}
REFERENCE_TOLERANCE = 0.003
VGG_MEANS_BGR = (91.4953, 103.8827, 131.0912)


def _reference_crop(name: str) -> np.ndarray:
    from facenet_pytorch import MTCNN
    from skimage import data

    image = data.astronaut() if name == "astronaut" else np.stack([data.camera()] * 3, axis=-1)
    boxes, _ = MTCNN(keep_all=True, post_process=False).detect(Image.fromarray(image))
    box = tuple(round(float(v)) for v in boxes[0])
    return np.asarray(Image.fromarray(image).crop(box).resize((224, 224), Image.Resampling.BILINEAR))


@needs_pretrained
def test_converted_network_reproduces_the_published_gender_outputs() -> None:
    net = load_faceres_identity(PRETRAINED)
    meta = ModelMetadata(version="t", **ARCHITECTURE_DEFAULTS["faceres_mobilenet_v1"])
    for name, expected in REFERENCE_P_MALE.items():
        with torch.no_grad():
            p_male = float(net(crops_to_tensor([_reference_crop(name)], meta))[0])
        assert p_male == pytest.approx(expected, abs=REFERENCE_TOLERANCE), name


@needs_pretrained
def test_rgb_first_convolution_equals_the_original_on_bgr_input() -> None:
    """The converter reverses conv1's input channels so serving feeds RGB; on the original's BGR input minus
    the VGGFace2 means, the original kernel gives the same activations."""
    state = faceres_state(PRETRAINED)
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.float32))
    bgr = rgb.flip(-1)
    conv = SameConv2d(3, 32, 2)
    conv.load_state_dict({"weight": state["trunk.conv1.weight"], "bias": state["trunk.conv1.bias"]})
    meta = ModelMetadata(version="t", **ARCHITECTURE_DEFAULTS["faceres_mobilenet_v1"])
    served = crops_to_tensor([p.numpy().astype(np.uint8) for p in rgb], meta)
    original = (bgr - torch.tensor(VGG_MEANS_BGR)).permute(0, 3, 1, 2)
    conv_bgr = SameConv2d(3, 32, 2)
    conv_bgr.load_state_dict({"weight": state["trunk.conv1.weight"].flip(1), "bias": state["trunk.conv1.bias"]})
    with torch.no_grad():
        torch.testing.assert_close(conv(served), conv_bgr(original), rtol=1e-4, atol=1e-3)


def test_vggface2_preprocessing_is_pixels_minus_the_means() -> None:
    """Train/serve parity of the new preprocessing: crops_to_tensor gives RGB 0-255 minus the VGGFace2 means."""
    meta = ModelMetadata(version="t", **ARCHITECTURE_DEFAULTS["faceres_mobilenet_v1"])
    pixels = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3)).astype(np.uint8)
    tensor = crops_to_tensor(list(pixels), meta)
    expected = torch.from_numpy(pixels.astype(np.float32)).permute(0, 3, 1, 2) - torch.tensor(
        VGG_MEANS_BGR[::-1]).view(1, 3, 1, 1)
    torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-4)


def test_same_padding_pads_bottom_right_on_stride_two() -> None:
    conv = SameConv2d(3, 4, 2)
    x = torch.randn(1, 3, 10, 10)
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(torch.randn(1, 3, 11, 11)).shape[-1] == 6  # ceil(11 / 2), padded one pixel each side


@needs_pretrained
def test_a_wrong_sha256_is_refused(tmp_path: Path) -> None:
    for name in FACERES_SHA256:
        shutil.copy(PRETRAINED / name, tmp_path / name)
    with (tmp_path / "faceres-deep.bin").open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelLoadError, match="sha256 mismatch for .*faceres-deep.bin"):
        read_tfjs_weights(tmp_path, "faceres-deep", FACERES_SHA256)
    with pytest.raises(ModelLoadError, match="missing"):
        read_tfjs_weights(tmp_path / "nowhere", "faceres-deep", FACERES_SHA256)


# -- pair-aware sampling with several fakes per real ------------------------------------------------------


def _groups() -> list[RealWithFakes]:
    groups = []
    for index, count in enumerate([1, 3, 2, 3, 0]):
        real = Sample(f"real/r{index}.jpg", 0, f"g{index}", "train")
        fakes = tuple(Sample(f"fake/f{index}_{k}.jpg", 1, f"g{index}", "train") for k in range(count))
        groups.append(RealWithFakes(real, fakes))
    return groups


def test_group_by_real_keeps_every_fake_of_a_real() -> None:
    groups = _groups()
    pairs = [Pair(g.real, f) for g in groups for f in g.fakes]
    regrouped = group_by_real(pairs)
    assert [(g.real, g.fakes) for g in regrouped] == [(g.real, g.fakes) for g in groups if g.fakes]


def test_each_real_draws_its_fakes_in_turn() -> None:
    groups = [g for g in _groups() if g.fakes]
    seen: dict[str, list[str]] = {g.real.file: [] for g in groups}
    for epoch in range(6):
        pairs = epoch_pairs(groups, epoch, seed=3)
        assert [p.real for p in pairs] == [g.real for g in groups]  # one pair per real, each real once
        for pair, group in zip(pairs, groups, strict=True):
            assert pair.fake in group.fakes  # always one of its own fakes
            seen[pair.real.file].append(pair.fake.file)  # type: ignore[union-attr]
    for group in groups:
        drawn = seen[group.real.file]
        n = len(group.fakes)
        for start in range(0, 6 - n + 1, n):  # every n consecutive epochs use each fake exactly once
            assert sorted(drawn[start : start + n]) == sorted(f.file for f in group.fakes)
    assert epoch_pairs(groups, 4, seed=3) == epoch_pairs(groups, 4, seed=3)  # a resumed epoch is the same
    assert all(p.fake == g.fakes[0] for p, g in zip(epoch_pairs(groups, 2, 3, "one"), groups, strict=True))
    with pytest.raises(ValueError, match="fakes"):
        epoch_pairs(groups, 0, 3, "some")


def test_unpaired_family_stays_in_its_split() -> None:
    samples = [Sample(f"{c}/{split}{i}.png", int(c == "fake"), "", split)
               for split in ("train", "val") for c in ("real", "fake") for i in range(5)]
    pairs = unpaired_pairs(samples, "train", seed=1)
    assert len(pairs) == 5
    assert all(p.real.label == 0 and p.fake is not None and p.fake.label == 1 for p in pairs)
    assert all(p.real.split == "train" and p.fake.split == "train" for p in pairs)  # type: ignore[union-attr]
    assert len({p.fake for p in pairs}) == 5


def test_trainer_batches_hold_a_real_with_one_of_its_own_fakes(tmp_path: Path) -> None:
    from tests.test_pipeline_training import make_dataset

    root = make_dataset(tmp_path / "data", train=4, val=2)
    _add_fakes(root, real_index=1, extra=2)
    cfg = _faceres_config(root, tmp_path / "run", pretrained="", fakes_per_real="all", epochs=3)
    trainer = Trainer(cfg, progress=False)
    seen: set[str] = set()
    for epoch in range(3):
        pairs = trainer.epoch_pairs(epoch)
        assert len({p.real for p in pairs}) == len(pairs) == 4
        for pair in pairs:
            assert pair.fake is not None and pair.fake.group == pair.real.group
            seen.add(pair.fake.file)
    assert {"fake/f1.jpg", "fake/f1_x0.jpg", "fake/f1_x1.jpg"} <= seen  # the real with 3 fakes used all 3


def _add_fakes(root: Path, real_index: int, extra: int) -> None:
    import csv

    real = np.asarray(Image.open(root / f"real/r{real_index}.jpg"))
    with (root / "manifest.csv").open("a", newline="") as manifest, \
            (root / "source_videos.csv").open("a", newline="") as sources:
        for k in range(extra):
            fake = real.copy()
            fake[40 + 10 * k : 120, 40:120] = 255 - fake[40 + 10 * k : 120, 40:120]
            name = f"fake/f{real_index}_x{k}.jpg"
            Image.fromarray(fake).save(root / name, quality=92)
            csv.writer(manifest).writerow([name, "fake", f"g{real_index}", "train"])
            csv.writer(sources).writerow([name, f"f{real_index}_x{k}.mp4", f"r{real_index}.mp4"])


# -- training from the pretrained start ---------------------------------------------------------------------


def _faceres_config(root: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        data=str(root), out=str(out), architecture="faceres_mobilenet_v1", pretrained=str(PRETRAINED),
        epochs=1, pairs_per_batch=2, max_train_pairs=4, warmup_steps=1, checkpoint_every=1, precision="fp32",
        threads=1, input_size=128, mask_weight=0.0, lr=1e-3, backbone_lr_scale=0.1,
        augment=AugmentConfig(window=96),
    )
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@needs_pretrained
def test_two_steps_from_the_pretrained_start_write_a_loadable_model(tmp_path: Path) -> None:
    from tests.test_pipeline_training import make_dataset

    root = make_dataset(tmp_path / "data", train=4, val=2)
    cfg = _faceres_config(root, tmp_path / "run")
    trainer = Trainer(cfg, progress=False)
    assert trainer.steps_per_epoch == 2
    summary = trainer.fit()
    assert 0.0 <= summary["val_auc"] <= 1.0
    model = load_classifier(tmp_path / "run" / "best")
    assert model.meta.architecture == "faceres_mobilenet_v1"
    assert model.meta.gradcam_layer == "backbone.blocks.10"
    assert model.meta.extra["pretrained"]["sha256"] == FACERES_SHA256
    assert isinstance(model.net, FaceResNet)
    start = faceres_state(PRETRAINED)["trunk.conv1.weight"]
    trained = model.net.backbone.conv1.weight.detach()
    assert not torch.equal(trained, start)  # it trained ...
    cosine = F.cosine_similarity(trained.flatten(), start.flatten(), dim=0)
    assert cosine > 0.99  # ... from the pretrained weights, not from a random start
    probs = model.fake_probability([np.full((128, 128, 3), 120, np.uint8)])
    assert probs.shape == (1,) and 0.0 <= probs[0] <= 1.0


def test_param_groups_give_the_backbone_its_share_of_the_rate() -> None:
    net = FaceResNet()
    cfg = TrainConfig(data="x", architecture="faceres_mobilenet_v1", backbone_lr_scale=0.1, layer_decay=0.5)
    groups = param_groups(net, cfg)
    head = [g for g in groups if not g["backbone"]]
    assert len(head) == 1 and head[0]["lr_scale"] == 1.0
    scales = sorted(g["lr_scale"] for g in groups if g["backbone"])
    assert scales[-1] == pytest.approx(0.1) and scales[0] == pytest.approx(0.1 * 0.5**12)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


# -- faces too small to judge ------------------------------------------------------------------------------


def _tiny_face_scene(astronaut: np.ndarray, big: bool) -> bytes:
    import io

    canvas = np.full((600, 800, 3), 200, np.uint8)
    small = np.asarray(Image.fromarray(astronaut).resize((180, 180), Image.Resampling.BILINEAR))
    canvas[380:560, 560:740] = small  # its face about 35 px across
    if big:
        canvas[40:552, 20:532] = astronaut  # its face about 90 px across
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_face_below_the_model_size_gets_no_verdict(classifier, astronaut: np.ndarray) -> None:  # noqa: ANN001
    from pipeline.screen import ScreenConfig, Screener, ScreenItem

    strict = replace(classifier, meta=replace(classifier.meta, min_face_side=60, threshold_fake=0.0,
                                              threshold_real=0.0))
    screener = Screener(strict, ScreenConfig(heatmaps="flagged", pdq=False))
    only_tiny, both = screener.screen_batch([ScreenItem("tiny", _tiny_face_scene(astronaut, big=False)),
                                             ScreenItem("both", _tiny_face_scene(astronaut, big=True))])
    assert only_tiny.status == "no_face" and only_tiny.reason == "face_too_small"
    assert only_tiny.verdict is None and only_tiny.fake_probability is None
    assert [f.verdict for f in only_tiny.faces] == ["too_small"]
    assert only_tiny.faces[0].heatmap_jpeg is None
    assert both.status == "scored"
    verdicts = {f.verdict for f in both.faces}
    assert verdicts == {"too_small", "fake"}  # threshold 0: every judged face is `fake`
    judged = [f for f in both.faces if f.verdict != "too_small"]
    assert both.fake_probability == max(f.fake_probability for f in judged)
    assert all(f.heatmap_jpeg is not None for f in judged)
    # without the limit the tiny face is judged like any other
    plain = Screener(replace(strict, meta=replace(strict.meta, min_face_side=0)), ScreenConfig(pdq=False))
    [again] = plain.screen_batch([ScreenItem("tiny", _tiny_face_scene(astronaut, big=False))])
    assert again.status == "scored" and again.faces[0].verdict == "fake"


# -- the ImageNet MobileNetV2 ---------------------------------------------------------------------------------


@needs_pretrained
def test_converted_mobilenet_v2_classifies_imagenet_photos() -> None:
    """Dequantized from the 2019 int8 TorchScript: a cat photo is a cat, a coffee cup an espresso."""
    from skimage import data

    from pipeline.backbones import MobileNetV2Trunk, mobilenet_v2_state

    state = mobilenet_v2_state(PRETRAINED / "mobilenet_v2_imagenet_int8.pt")
    trunk = MobileNetV2Trunk()
    trunk.load_state_dict({k: v for k, v in state.items() if k.startswith("blocks.")})
    meta = ModelMetadata(version="t", **ARCHITECTURE_DEFAULTS["mobilenet_v2_imagenet"])
    crops = [np.asarray(Image.fromarray(image).resize((224, 224))) for image in (data.chelsea(), data.coffee())]
    with torch.no_grad():
        pooled = trunk(crops_to_tensor(crops, meta))[0].mean(dim=(2, 3))
        probs = (pooled @ state["classifier.weight"].t() + state["classifier.bias"]).softmax(dim=1)
    assert int(probs[0].argmax()) in range(281, 286)  # the ImageNet cats
    assert int(probs[1].argmax()) == 967 and float(probs[1].max()) > 0.9  # espresso


@needs_pretrained
def test_mobilenet_v2_with_a_wrong_sha256_is_refused(tmp_path: Path) -> None:
    from pipeline.backbones import mobilenet_v2_state

    copy = tmp_path / "mobilenet_v2_imagenet_int8.pt"
    data = bytearray((PRETRAINED / "mobilenet_v2_imagenet_int8.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        mobilenet_v2_state(copy)


def test_flip_averaging_scores_a_crop_and_its_mirror_alike(tmp_path: Path) -> None:
    from pipeline.model import save_model

    torch.manual_seed(0)
    meta = ModelMetadata(version="t", architecture="faceres_mobilenet_v1", input_size=96, tta_flip=True,
                         **ARCHITECTURE_DEFAULTS["faceres_mobilenet_v1"])
    save_model(FaceResNet().eval(), meta, tmp_path / "m")
    model = load_classifier(tmp_path / "m")
    crop = np.random.default_rng(2).integers(0, 256, (96, 96, 3)).astype(np.uint8)
    mirrored = np.ascontiguousarray(crop[:, ::-1])
    both = model.fake_probability([crop, mirrored])
    assert both[0] == pytest.approx(both[1], rel=1e-6)
    plain = load_classifier(tmp_path / "m")
    plain.meta = replace(plain.meta, tta_flip=False)
    one, other = plain.fake_probability([crop, mirrored])
    assert one != other  # a random network is not mirror-symmetric on its own
    expected = 1 / (1 + np.exp(-(np.log(one / (1 - one)) + np.log(other / (1 - other))) / 2))
    assert both[0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("architecture", ["faceres_mobilenet_v1", "mobilenet_v2_imagenet"])
def test_gradcam_resumed_from_the_forward_equals_the_full_gradcam(architecture: str, tmp_path: Path) -> None:
    """The pooled-taps networks split at their Grad-CAM layer: one forward gives the probabilities and the
    layer's activations, and the maps from those equal a full Grad-CAM pass."""
    from pipeline.explain import gradcam, gradcam_from_features
    from pipeline.model import build_network, save_model

    torch.manual_seed(3)
    net = build_network(architecture).eval()
    with torch.no_grad():
        net.head.weight.mul_(50)  # a random head's logit barely moves; make the maps worth comparing
    meta = ModelMetadata(version="t", architecture=architecture, input_size=112, **ARCHITECTURE_DEFAULTS[architecture])
    save_model(net, meta, tmp_path / "m")
    model = load_classifier(tmp_path / "m")
    assert model.split_stage == meta.gradcam_layer.removeprefix("backbone.")
    rng = np.random.default_rng(4)
    crops = [rng.integers(0, 256, (112, 112, 3)).astype(np.uint8) for _ in range(3)]
    probs, features = model.fake_probability_with_features(crops)
    assert features is not None and len(features) == 3
    np.testing.assert_allclose(probs, model.fake_probability(crops), rtol=1e-6)
    full, resumed = gradcam(model, crops), gradcam_from_features(model, features)
    for a, b in zip(full, resumed, strict=True):
        assert a.std() > 0.01
        np.testing.assert_allclose(a, b, atol=1e-3)
    assert all(p.grad is None for p in model.net.parameters())


def test_face_crops_of_a_whole_image_family(tmp_path: Path, astronaut: np.ndarray) -> None:
    """A family of whole portraits becomes the MTCNN crops serving would score; a faceless image is counted
    and left out, and a second call reuses the first's output."""
    import csv

    from pipeline.training.facecrops import crop_dataset

    source = tmp_path / "family"
    (source / "real").mkdir(parents=True)
    (source / "fake").mkdir()
    Image.fromarray(astronaut).save(source / "real" / "a.jpg", quality=92)
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(source / "fake" / "b.jpg", quality=92)
    Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(source / "fake" / "wall.jpg")
    with (source / "manifest.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["file", "label", "split"], ["real/a.jpg", "real", "train"],
                                      ["fake/b.jpg", "fake", "train"], ["fake/wall.jpg", "fake", "val"]])
    counts = crop_dataset(source, tmp_path / "crops", progress=False)
    assert counts == {"images": 3, "cropped": 2, "no_face": 1, "invalid": 0}
    rows = list(csv.DictReader((tmp_path / "crops" / "manifest.csv").open()))
    assert [(r["file"], r["label"], r["split"]) for r in rows] == [("real/a.png", "real", "train"),
                                                                   ("fake/b.png", "fake", "train")]
    assert Image.open(tmp_path / "crops" / "real" / "a.png").size == (224, 224)
    (tmp_path / "crops" / "real" / "a.png").unlink()
    assert crop_dataset(source, tmp_path / "crops", progress=False) == counts  # reused, not recomputed


def test_an_extra_family_without_crops_is_a_clear_error(tmp_path: Path) -> None:
    from tests.test_pipeline_training import make_dataset

    root = make_dataset(tmp_path / "data", train=2, val=1)
    cfg = _faceres_config(root, tmp_path / "run", pretrained="", extra_data=(str(tmp_path / "missing"),))
    with pytest.raises(ValueError, match="python -m pipeline.training.facecrops"):
        Trainer(cfg, progress=False)
