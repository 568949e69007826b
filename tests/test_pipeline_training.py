"""pipeline.training: metrics and calibration, augmentations, pair batches, train/serve parity, a tiny run."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.decode import decode_image
from pipeline.faces import resize_square
from pipeline.model import Classifier, crops_to_tensor, load_classifier
from pipeline.screen import ScreenConfig, Screener, ScreenItem
from pipeline.training.augment import AugmentConfig, apply_params, difference_mask, draw_params
from pipeline.training.data import Sample, load_crop, make_pair_batch, read_manifest, read_pairs
from pipeline.training.metrics import at_threshold, auc, choose_thresholds, ece, fit_platt, fit_temperature
from pipeline.training.sbi import face_mask, self_blend
from pipeline.training.train import TrainConfig, Trainer, selection_score, update_ema

# -- metrics ------------------------------------------------------------------------------------------


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_by_hand_with_ties() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4])
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4, 0.4: wins 1 + 3 + (1 + 0.5 + 0.5) = 6 of 9
    assert auc(labels, scores) == pytest.approx(6 / 9)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 6, 60) / 5.0  # many ties
    assert auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))
    assert auc(np.array([0, 1]), np.array([0.2, 0.9])) == 1.0
    assert auc(np.array([0, 1]), np.array([0.9, 0.2])) == 0.0
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.9])))


def test_ece_by_hand() -> None:
    labels = np.array([0, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.8, 0.9])
    # two bins: [0, .5] holds .1, .2 (mean .15, accuracy .5); (.5, 1] holds .8, .9 (mean .85, accuracy 1)
    assert ece(labels, probs, bins=2) == pytest.approx((2 * 0.35 + 2 * 0.15) / 4)
    assert ece(np.array([0, 1]), np.array([0.0, 1.0])) == pytest.approx(0.0)
    assert ece(np.array([0, 0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert math.isnan(ece(np.array([]), np.array([])))


def test_at_threshold_counts() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.6, 0.2, 0.7, 0.5, 0.1, 0.6])
    report = at_threshold(labels, probs, 0.6)  # at the threshold counts as positive
    assert (report.tp, report.fp, report.tn, report.fn) == (2, 2, 2, 1)
    assert report.precision == pytest.approx(0.5)
    assert report.recall == pytest.approx(2 / 3)
    assert report.accuracy == pytest.approx(4 / 7)
    assert report.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    nothing = at_threshold(labels, probs, 0.95)
    assert (nothing.tp, nothing.fp, nothing.precision, nothing.f1) == (0, 0, 0.0, 0.0)


@pytest.mark.parametrize(("max_fpr", "max_miss"), [(0.01, 0.05), (0.05, 0.01), (0.0, 0.0), (0.2, 0.2)])
def test_choose_thresholds_respects_the_budgets(max_fpr: float, max_miss: float) -> None:
    rng = np.random.default_rng(1)
    reals, fakes = rng.beta(2, 5, 2000), rng.beta(5, 2, 1000)
    labels = np.r_[np.zeros(len(reals)), np.ones(len(fakes))]
    probs = np.r_[reals, fakes]
    fake_t, real_t = choose_thresholds(labels, probs, max_fpr=max_fpr, max_miss=max_miss)
    assert 0.0 <= real_t <= fake_t <= 1.0
    flagged_reals = int((reals >= fake_t).sum())
    cleared_fakes = int((fakes <= real_t).sum())
    assert flagged_reals <= max_fpr * len(reals)
    if real_t < fake_t:  # not pulled down: the miss budget is used exactly
        assert cleared_fakes == math.floor(max_miss * len(fakes))
    assert cleared_fakes <= max_miss * len(fakes)
    assert flagged_reals == math.floor(max_fpr * len(reals))  # continuous scores: the budget is used exactly


def test_choose_thresholds_never_inverted() -> None:
    """Separable scores put the miss budget's threshold above the false-positive one: the real threshold
    is pulled down to the fake one, leaving an empty uncertain band rather than an inverted one."""
    rng = np.random.default_rng(2)
    reals, fakes = rng.uniform(0.0, 0.3, 500), rng.uniform(0.7, 1.0, 500)
    labels = np.r_[np.zeros(500), np.ones(500)]
    fake_t, real_t = choose_thresholds(labels, np.r_[reals, fakes], max_fpr=0.01, max_miss=0.05)
    assert real_t == fake_t
    assert (reals >= fake_t).sum() <= 5 and (fakes <= real_t).sum() == 0


def test_fit_temperature_recovers_two() -> None:
    rng = np.random.default_rng(3)
    true_logit = rng.normal(0.0, 2.0, 20_000)
    labels = (rng.random(20_000) < 1.0 / (1.0 + np.exp(-true_logit))).astype(float)
    temperature = fit_temperature(labels, 2.0 * true_logit)
    assert temperature == pytest.approx(2.0, rel=0.15)
    assert fit_temperature(labels, true_logit) == pytest.approx(1.0, rel=0.15)


def test_fit_platt_recovers_a_temperature_and_a_shift() -> None:
    """Logits that sit off-centre (reals above zero) need a shift a temperature cannot give."""
    rng = np.random.default_rng(4)
    true_logit = rng.normal(0.0, 2.0, 20_000)
    labels = (rng.random(20_000) < 1.0 / (1.0 + np.exp(-true_logit))).astype(float)
    shifted = 2.0 * (true_logit + 0.75)  # the network says 2 (z + 0.75): T = 2, b = -0.75
    temperature, bias = fit_platt(labels, shifted)
    assert temperature == pytest.approx(2.0, rel=0.1)
    assert bias == pytest.approx(-0.75, abs=0.1)
    probs_platt = 1 / (1 + np.exp(-(shifted / temperature + bias)))
    probs_t = 1 / (1 + np.exp(-shifted / fit_temperature(labels, shifted)))
    assert ece(labels, probs_platt) < 0.02 < ece(labels, probs_t)
    assert fit_platt(labels, -shifted)[1] == 0.0  # anti-correlated scores: the plain temperature, no shift


# -- augmentations ------------------------------------------------------------------------------------

ALL_ON = AugmentConfig(window=96, flip=1.0, color=1.0, blur=1.0, downup=1.0, jpeg=1.0, noise=1.0)


def _face_like(seed: int = 0, side: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    base = np.stack([xx, yy, (xx + yy) // 2], axis=2) % 256
    return np.clip(base + rng.integers(-20, 21, (side, side, 3)), 0, 255).astype(np.uint8)


def test_draw_params_deterministic_for_a_seed() -> None:
    cfg = AugmentConfig()
    first = [draw_params(np.random.default_rng(s), 224, cfg) for s in range(20)]
    again = [draw_params(np.random.default_rng(s), 224, cfg) for s in range(20)]
    assert first == again
    assert len(set(first)) == 20
    for params in first:
        left, top, right, bottom = params.box
        assert 0 <= left < right <= 224 and 0 <= top < bottom <= 224
        assert right - left == bottom - top


def test_all_augmentations_drawn_in_range() -> None:
    params = draw_params(np.random.default_rng(4), 224, ALL_ON)
    assert params.flip
    assert 0.8 <= params.brightness <= 1.2 and 0.8 <= params.contrast <= 1.2
    assert 0.4 <= params.blur_sigma <= 1.6
    assert 0.45 <= params.downup_scale <= 0.9
    assert 40 <= params.jpeg_quality <= 100
    assert 2.0 <= params.noise_sigma <= 7.0


def test_apply_params_deterministic_and_identical_for_both_members() -> None:
    real = _face_like()
    for seed in range(5):
        params = draw_params(np.random.default_rng(seed), 224, ALL_ON)
        out = apply_params(real, params, 96)
        assert out.shape == (96, 96, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, apply_params(real.copy(), params, 96))


def test_flip_only_is_an_exact_mirror() -> None:
    cfg = AugmentConfig(
        window=224, window_scale=(1.0, 1.0), flip=1.0, color=0, blur=0, downup=0, jpeg=0, noise=0
    )
    pixels = _face_like(1)
    params = draw_params(np.random.default_rng(0), 224, cfg)
    np.testing.assert_array_equal(apply_params(pixels, params, 224), pixels[:, ::-1])


def test_difference_mask() -> None:
    real = _face_like(2, side=96)
    fake = real.copy()
    fake[:24, :24] = 255 - fake[:24, :24]
    assert not difference_mask(real, real, 4).any()
    mask = difference_mask(real, fake, 4)
    assert mask.shape == (4, 4) and mask.dtype == np.float32
    assert mask[0, 0] == pytest.approx(1.0) and mask[1:, :].max() == 0.0 and mask[:, 1:].max() == 0.0


def test_self_blend() -> None:
    real = _face_like(3)
    a = self_blend(real, np.random.default_rng(5))
    b = self_blend(real, np.random.default_rng(5))
    assert a.shape == real.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - real).mean() > 0.5
    mask = face_mask(np.random.default_rng(6), 224)
    assert mask.min() >= 0.0 and mask.max() <= 1.0 and mask[112, 112] > 0.5 and mask[0, 0] < 0.05


# -- dataset ------------------------------------------------------------------------------------------


def make_dataset(root: Path, train: int = 4, val: int = 2, provenance: bool = True) -> Path:
    """real/rN.jpg and fake/fN.jpg (224 px JPEGs; the fake has an inverted centre), manifest, provenance."""
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    manifest, sources = [], []
    for index in range(train + val):
        split = "train" if index < train else "val"
        real = _face_like(10 + index)
        fake = real.copy()
        fake[64:160, 64:160] = 255 - fake[64:160, 64:160]
        real_file, fake_file = f"real/r{index}.jpg", f"fake/f{index}.jpg"
        Image.fromarray(real).save(root / real_file, quality=92)
        Image.fromarray(fake).save(root / fake_file, quality=92)
        manifest += [(real_file, "real", f"g{index}", split), (fake_file, "fake", f"g{index}", split)]
        sources += [(real_file, f"r{index}.mp4", ""), (fake_file, f"f{index}.mp4", f"r{index}.mp4")]
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "group", "split"])
        writer.writerows(manifest[::-1])  # the pairing must not depend on the manifest's order
    if provenance:
        with (root / "source_videos.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "dfdc_video", "dfdc_original_video"])
            writer.writerows(sources)
    return root


def test_manifest_and_pairs(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    samples = read_manifest(root)
    assert len(samples) == 12
    assert {s.label for s in samples if s.file.startswith("fake/")} == {1}
    assert sum(s.split == "val" for s in samples) == 4
    pairs = read_pairs(root, samples)
    assert len(pairs) == 6
    for pair in pairs:
        assert pair.fake is not None
        assert pair.real.label == 0 and pair.fake.label == 1
        assert pair.real.file[len("real/r") :] == pair.fake.file[len("fake/f") :]  # the fake's own source
        assert pair.real.split == pair.fake.split


def test_pairs_without_provenance_zip_by_class(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", train=2, val=0, provenance=False)
    pairs = read_pairs(root, read_manifest(root))
    assert len(pairs) == 2
    assert all(p.real.label == 0 and p.fake is not None and p.fake.label == 1 for p in pairs)


def test_manifest_refuses_unknown_label(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("file,label,group,split\na.jpg,maybe,g,train\n")
    with pytest.raises(ValueError, match="maybe"):
        read_manifest(tmp_path)


def test_make_pair_batch(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    pairs = read_pairs(root, read_manifest(root))[:3]
    cfg = AugmentConfig(window=96)
    batch = make_pair_batch(root, pairs, np.random.default_rng(7), cfg, mask_grid=4)
    assert len(batch.images) == 6
    assert all(image.shape == (96, 96, 3) and image.dtype == np.uint8 for image in batch.images)
    assert batch.labels.tolist() == [0.0, 1.0] * 3
    assert batch.labels.dtype == np.float32
    assert batch.masks.shape == (6, 4, 4)
    for index, pair in enumerate(pairs):
        params = batch.params[2 * index]
        assert batch.params[2 * index + 1] is params  # one draw per pair, applied to both members
        np.testing.assert_array_equal(
            batch.images[2 * index], apply_params(load_crop(root, pair.real), params, 96)
        )
        np.testing.assert_array_equal(
            batch.images[2 * index + 1], apply_params(load_crop(root, pair.fake), params, 96)
        )
        assert not batch.masks[2 * index].any()  # reals: zero mask
        assert batch.masks[2 * index + 1].max() > 0.5  # the inverted centre shows in the fake's mask
    again = make_pair_batch(root, pairs, np.random.default_rng(7), cfg, mask_grid=4)
    for a, b in zip(batch.images, again.images, strict=True):
        np.testing.assert_array_equal(a, b)


def test_random_batches_switch_off_pairing(tmp_path: Path) -> None:
    """The pair-aware lever off: the reals come from other pairs, each with its own augmentation draw, while
    each fake's mask target still comes from its own real."""
    root = make_dataset(tmp_path / "data")
    pairs = read_pairs(root, read_manifest(root))[:3]
    others = pairs[1:] + pairs[:1]
    cfg = AugmentConfig(window=96)
    batch = make_pair_batch(root, pairs, np.random.default_rng(7), cfg, mask_grid=4, reals=others)
    paired = make_pair_batch(root, pairs, np.random.default_rng(7), cfg, mask_grid=4)
    assert batch.labels.tolist() == [0.0, 1.0] * 3
    for index in range(3):  # the fakes, their augmentation and masks are those of the paired batch
        np.testing.assert_array_equal(batch.images[2 * index + 1], paired.images[2 * index + 1])
        np.testing.assert_array_equal(batch.masks[2 * index + 1], paired.masks[2 * index + 1])
    for index, (pair, other) in enumerate(zip(pairs, others, strict=True)):
        real_params, fake_params = batch.params[2 * index], batch.params[2 * index + 1]
        assert real_params != fake_params  # two independent draws
        np.testing.assert_array_equal(batch.images[2 * index], apply_params(load_crop(root, other.real), real_params, 96))
        np.testing.assert_array_equal(batch.images[2 * index + 1], apply_params(load_crop(root, pair.fake), fake_params, 96))
        assert batch.masks[2 * index + 1].max() > 0.5  # against its own real: the inverted centre


def test_source_side_downscales_before_the_window(tmp_path: Path) -> None:
    """The native-resolution lever off: windows are cut from the crop resized to source_side."""
    root = make_dataset(tmp_path / "data", train=1, val=0)
    pairs = read_pairs(root, read_manifest(root))
    cfg = AugmentConfig(window=64, window_scale=(1.0, 1.125))
    batch = make_pair_batch(root, pairs, np.random.default_rng(3), cfg, mask_grid=4, source_side=72)
    params = batch.params[0]
    left, top, right, bottom = params.box
    assert right <= 72 and bottom <= 72 and right - left >= 64
    np.testing.assert_array_equal(batch.images[0], apply_params(load_crop(root, pairs[0].real, 72), params, 64))


def test_make_pair_batch_self_blend(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", train=1, val=0)
    pairs = read_pairs(root, read_manifest(root))
    batch = make_pair_batch(
        root, pairs, np.random.default_rng(8), AugmentConfig(window=96), mask_grid=4, sbi_fraction=1.0
    )
    assert batch.labels.tolist() == [0.0, 1.0]
    assert not np.array_equal(batch.images[0], batch.images[1])


# -- train/serve parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [224, 300])
def test_train_serve_parity(tmp_path: Path, classifier: Classifier, side: int) -> None:
    """The crop a model is validated on is, bit for bit, the tensor serving builds from the same bytes."""
    pixels = _face_like(20, side=side)
    (tmp_path / "real").mkdir()
    Image.fromarray(pixels).save(tmp_path / "real" / "x.jpg", quality=90)
    data = (tmp_path / "real" / "x.jpg").read_bytes()
    meta = classifier.meta
    trained = crops_to_tensor(
        [load_crop(tmp_path, Sample("real/x.jpg", 0, "g", "val"), meta.input_size)], meta
    )
    served = crops_to_tensor([resize_square(decode_image(data).pixels, meta.input_size)], meta)
    assert torch.equal(trained, served)
    small = replace(meta, input_size=128)
    assert torch.equal(
        crops_to_tensor([load_crop(tmp_path, Sample("real/x.jpg", 0, "g", "val"), 128)], small),
        crops_to_tensor([resize_square(decode_image(data).pixels, 128)], small),
    )
    [verdict] = Screener(classifier, ScreenConfig(crops=True, heatmaps="none")).screen_batch(
        [ScreenItem("x", data)]
    )
    expected = classifier.fake_probability([load_crop(tmp_path, Sample("real/x.jpg", 0, "g", "val"), 224)])[0]
    assert verdict.fake_probability == expected


# -- a tiny training run ------------------------------------------------------------------------------


def _config(root: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        data=str(root),
        out=str(out),
        epochs=1,
        pairs_per_batch=2,
        max_train_pairs=4,
        warmup_steps=1,
        checkpoint_every=1,
        precision="fp32",
        threads=1,
        input_size=128,
        augment=AugmentConfig(window=96),
    )
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny-dataset"))


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TrainConfig, dict]]:
    runs = tmp_path_factory.mktemp("runs")
    cfg = _config(dataset, runs / "tiny")
    summary = Trainer(cfg, progress=False).fit()
    yield cfg, summary
    shutil.rmtree(runs, ignore_errors=True)  # checkpoints are ~300 MB each


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "runs"
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


class _Interrupt(Exception):
    pass


def _interrupted_then_resumed(cfg: TrainConfig, stop_before_call: int) -> Trainer:
    trainer = Trainer(cfg, progress=False)
    step, calls = trainer._train_step, [0]

    def stopping(*args):  # noqa: ANN002, ANN202
        calls[0] += 1
        if calls[0] == stop_before_call:
            raise _Interrupt
        return step(*args)

    trainer._train_step = stopping  # type: ignore[method-assign]
    with pytest.raises(_Interrupt):
        trainer.fit()
    resumed = Trainer(cfg, progress=False)
    resumed.fit()
    return resumed


def _checkpoint_model(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_training_run_writes_a_loadable_model(trained: tuple[TrainConfig, dict]) -> None:
    cfg, summary = trained
    run = Path(cfg.out)
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "curves.png",
        "calibration.json",
        "best/model.safetensors",
        "best/model.json",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert json.loads((run / "config.json").read_text())["input_size"] == 128
    model = load_classifier(run / "best")
    assert model.meta.input_size == 128
    assert model.meta.temperature == pytest.approx(summary["temperature"])
    assert (model.meta.threshold_fake, model.meta.threshold_real) == (
        summary["threshold_fake"],
        summary["threshold_real"],
    )
    assert 0.0 <= model.meta.threshold_real <= model.meta.threshold_fake <= 1.0
    assert model.meta.extra["validation"]["val_auc"] == summary["val_auc"]
    assert "DFDC" in model.meta.terms and not model.meta.placeholder
    probs = model.fake_probability([_face_like(1, side=128), _face_like(2, side=200)])
    assert probs.shape == (2,) and np.all((probs >= 0) & (probs <= 1))
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["state"]
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 0, 2)


@pytest.mark.slow
def test_second_trainer_resumes_without_retraining(trained: tuple[TrainConfig, dict]) -> None:
    cfg, _ = trained
    run = Path(cfg.out)
    before = _checkpoint_model(run)
    again = Trainer(cfg, progress=False)
    again.fit()
    assert again.state["epoch"] == 1 and again.state["global_step"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    _assert_same_weights(before, _checkpoint_model(run))
    _assert_same_weights(before, {k: v.cpu() for k, v in again.net.state_dict().items()})


@pytest.mark.slow
def test_resume_refuses_a_different_config(trained: tuple[TrainConfig, dict]) -> None:
    cfg, _ = trained
    other = Trainer(replace(cfg, lr=cfg.lr / 10), progress=False)
    with pytest.raises(ValueError, match="different config"):
        other.try_resume()
    # settings that do not change the result may differ
    assert Trainer(replace(cfg, checkpoint_every=50), progress=False).try_resume()


@pytest.mark.slow
def test_a_checkpoint_older_than_a_setting_resumes_with_its_default(trained: tuple[TrainConfig, dict], runs: Path) -> None:
    cfg, _ = trained
    runs.mkdir(parents=True)
    old = runs / "old"
    shutil.copytree(Path(cfg.out), old)
    ckpt = torch.load(old / "checkpoint.pt", map_location="cpu", weights_only=False)
    del ckpt["config"]["ema_decay"], ckpt["config"]["augment"]["real_blur"]  # written before these existed
    torch.save(ckpt, old / "checkpoint.pt")
    assert Trainer(replace(cfg, out=str(old)), progress=False).try_resume()
    with pytest.raises(ValueError, match="different config"):
        Trainer(replace(cfg, out=str(old), ema_decay=0.5), progress=False).try_resume()


@pytest.mark.slow
def test_refused_resume_keeps_the_run_config(trained: tuple[TrainConfig, dict]) -> None:
    cfg, _ = trained
    path = Path(cfg.out) / "config.json"
    before = path.read_text()
    with pytest.raises(ValueError, match="different config"):
        Trainer(replace(cfg, lr=cfg.lr / 10), progress=False).fit()
    assert path.read_text() == before


@pytest.mark.slow
def test_mid_epoch_resume_is_exact_without_dropout(dataset: Path, runs: Path) -> None:
    straight = Trainer(_config(dataset, runs / "straight", dropout=0.0), progress=False)
    straight.fit()
    _interrupted_then_resumed(_config(dataset, runs / "resumed", dropout=0.0), stop_before_call=2)
    _assert_same_weights(_checkpoint_model(runs / "straight"), _checkpoint_model(runs / "resumed"))


@pytest.mark.slow
def test_mid_epoch_resume_is_exact_with_dropout(trained: tuple[TrainConfig, dict], runs: Path) -> None:
    cfg, _ = trained
    assert cfg.dropout > 0
    _interrupted_then_resumed(replace(cfg, out=str(runs / "resumed")), stop_before_call=2)
    _assert_same_weights(_checkpoint_model(Path(cfg.out)), _checkpoint_model(runs / "resumed"))


def test_update_ema_moves_a_share_of_the_way() -> None:
    ema, net = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, net, decay=0.75)
    for name, value in ema.state_dict().items():
        expected = 0.75 * before[name] + 0.25 * net.state_dict()[name]
        assert torch.allclose(value, expected), name


@pytest.mark.slow
def test_ema_weights_are_judged_exported_and_resumed(dataset: Path, runs: Path) -> None:
    cfg = _config(dataset, runs / "straight", dropout=0.0, ema_decay=0.5)
    straight = Trainer(cfg, progress=False)
    straight.fit()
    assert straight.ema is not None
    averaged = {k: v.cpu() for k, v in straight.ema.state_dict().items()}
    raw = {k: v.cpu() for k, v in straight.net.state_dict().items()}
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)
    shipped = load_classifier(runs / "straight" / "best", precision="fp32", fold=False)
    exported = shipped.net.state_dict()
    weights = [k for k in exported if k in averaged and averaged[k].ndim > 1]
    assert weights
    for name in weights:
        assert torch.allclose(exported[name].float(), averaged[name], atol=1e-3), name
    resumed = _interrupted_then_resumed(replace(cfg, out=str(runs / "resumed")), stop_before_call=2)
    assert resumed.ema is not None
    _assert_same_weights(averaged, {k: v.cpu() for k, v in resumed.ema.state_dict().items()})


def test_train_config_from_dict() -> None:
    cfg = TrainConfig.from_dict({"data": "d", "augment": {"window": 96, "window_scale": [1.0, 1.1]}})
    assert cfg.augment == AugmentConfig(window=96, window_scale=(1.0, 1.1))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"data": "d", "learning_rate": 1})


def test_selection_score_main_or_mean_over_families() -> None:
    row = {"epoch": 2, "val_auc": 0.80, "val_auc_gan-faces-crops": 0.90, "train_loss": 0.3}
    assert selection_score(row, "main") == pytest.approx(0.80)
    assert selection_score(row, "mean") == pytest.approx(0.85)
    assert selection_score({"val_auc": 0.7}, "mean") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="select_on"):
        TrainConfig.from_dict({"data": "d", "select_on": "gan"})


def test_training_precision_auto_uses_bf16_only_where_the_cpu_computes_it() -> None:
    from pipeline.model import cpu_has_bf16_units
    from pipeline.training.train import _autocast

    assert TrainConfig(data="d").precision == "auto"
    with _autocast(torch.device("cpu"), "auto"):
        assert torch.is_autocast_enabled("cpu") == cpu_has_bf16_units()
    with _autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.slow
def test_export_ships_a_loadable_model_and_measures_bf16_only_where_it_is_native(dataset: Path, runs: Path) -> None:
    from pipeline.model import resolve_precision
    from pipeline.training.export import export_model

    Trainer(_config(dataset, runs / "run"), progress=False).fit()
    export_model(runs / "run", runs / "shipped", "test-export")
    shipped = load_classifier(runs / "shipped", precision="fp32")
    aucs = shipped.meta.extra["validation_auc_by_precision"]
    native = resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert {"fp32", "fp16_weights"} <= set(aucs) and ("bf16_autocast" in aucs) == native
    assert shipped.meta.version == "test-export"
