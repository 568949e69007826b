"""pipeline.model: loading with sha256 checks, the shared preprocessing, batched inference."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import ModelLoadError
from pipeline.model import (
    METADATA_FILE,
    WEIGHTS_FILE,
    Classifier,
    ModelMetadata,
    build_network,
    crops_to_tensor,
    file_sha256,
    load_classifier,
    read_metadata,
    save_model,
    torch_threads,
)


def _crops(count: int, side: int = 224, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]


def _folder_with(tmp_path: Path, tmp_model: Path, meta: dict | bytes, weights: bool = True) -> Path:
    """A model folder whose weights link to the session's placeholder (no 94 MB copy)."""
    folder = tmp_path / "model"
    folder.mkdir()
    if weights:
        (folder / WEIGHTS_FILE).symlink_to(tmp_model / WEIGHTS_FILE)
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    (folder / METADATA_FILE).write_bytes(raw)
    return folder


# -- loading ------------------------------------------------------------------------------------------


def test_placeholder_metadata(tmp_model: Path, classifier: Classifier) -> None:
    meta = read_metadata(tmp_model)
    assert meta.placeholder is True
    assert "placeholder" in meta.version and "not a detector" in meta.training_data
    assert meta.sha256 == file_sha256(tmp_model / WEIGHTS_FILE)
    assert classifier.meta == meta
    assert classifier.version == meta.version
    assert not classifier.net.training
    assert classifier.net.mask_head is None


def test_save_load_round_trip(tmp_path: Path, tmp_model: Path) -> None:
    classifier = load_classifier(tmp_model, fold=False)
    with pytest.raises(ValueError, match="folded"):
        save_model(load_classifier(tmp_model).net, classifier.meta, tmp_path / "refused")
    meta = replace(
        classifier.meta,
        version="round-trip",
        temperature=1.7,
        threshold_fake=0.8,
        threshold_real=0.2,
        extra={"note": "kept"},
    )
    saved = save_model(classifier.net, meta, tmp_path / "copy")
    assert saved.sha256 == file_sha256(tmp_path / "copy" / WEIGHTS_FILE)
    loaded = load_classifier(tmp_path / "copy", fold=False)
    assert loaded.meta == saved
    assert loaded.meta.mean == (0.5, 0.5, 0.5)  # tuples survive JSON
    original = classifier.net.state_dict()
    for name, tensor in loaded.net.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_save_drops_the_mask_head_and_half_weights_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_network("inception_resnet_v1", mask_head=True).eval()
    save_model(net, ModelMetadata(version="half"), tmp_path / "half", half=True)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "half" / WEIGHTS_FILE))
    assert not any(k.startswith("mask_head.") for k in state)
    assert state["backbone.logits.weight"].dtype == torch.float16
    loaded = load_classifier(tmp_path / "half")
    assert loaded.net.backbone.logits.weight.dtype == torch.float32
    assert torch.allclose(loaded.net.backbone.logits.weight, net.backbone.logits.weight, atol=1e-3)


def test_unknown_fields_kept_in_extra() -> None:
    meta = ModelMetadata.from_dict({"version": "v", "mean": [0.1, 0.2, 0.3], "future_field": 3})
    assert meta.mean == (0.1, 0.2, 0.3)
    assert meta.extra == {"future_field": 3}


def test_wrong_sha256_refused(tmp_path: Path, tmp_model: Path) -> None:
    meta = json.loads((tmp_model / METADATA_FILE).read_text())
    meta["sha256"] = "0" * 64
    folder = _folder_with(tmp_path, tmp_model, meta)
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as info:
        load_classifier(folder)
    assert "0" * 64 in str(info.value) and file_sha256(tmp_model / WEIGHTS_FILE) in str(info.value)


def test_missing_sha256_refused(tmp_path: Path, tmp_model: Path) -> None:
    meta = json.loads((tmp_model / METADATA_FILE).read_text())
    meta["sha256"] = ""
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch.*\(none\)"):
        load_classifier(_folder_with(tmp_path, tmp_model, meta))


def test_missing_weights(tmp_path: Path, tmp_model: Path) -> None:
    folder = _folder_with(
        tmp_path, tmp_model, json.loads((tmp_model / METADATA_FILE).read_text()), weights=False
    )
    with pytest.raises(ModelLoadError, match="no weights"):
        load_classifier(folder)


def test_missing_metadata(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no model metadata"):
        load_classifier(tmp_path)


@pytest.mark.parametrize("raw", [b"{not json", b"{}", b'{"version": "v", "mean": 3}'])
def test_invalid_metadata(tmp_path: Path, tmp_model: Path, raw: bytes) -> None:
    with pytest.raises(ModelLoadError, match="invalid"):
        load_classifier(_folder_with(tmp_path, tmp_model, raw))


@pytest.mark.parametrize(
    "raw", [b"\xff\xfe\x00garbage", b"[]", b'"a string"'], ids=["not-utf8", "list", "str"]
)
def test_corrupt_metadata_is_a_model_load_error(tmp_path: Path, tmp_model: Path, raw: bytes) -> None:
    with pytest.raises(ModelLoadError):
        load_classifier(_folder_with(tmp_path, tmp_model, raw))


def test_unknown_architecture_and_precision(tmp_path: Path, tmp_model: Path) -> None:
    meta = json.loads((tmp_model / METADATA_FILE).read_text())
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_classifier(_folder_with(tmp_path, tmp_model, {**meta, "architecture": "vgg"}))
    with pytest.raises(ModelLoadError, match="unknown precision"):
        load_classifier(tmp_model, precision="int3")


def test_weights_of_another_shape_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "other"
    folder.mkdir()
    save_file({"some.weight": torch.zeros(3)}, str(folder / WEIGHTS_FILE))
    meta = ModelMetadata(version="other", sha256=file_sha256(folder / WEIGHTS_FILE))
    (folder / METADATA_FILE).write_text(meta.to_json())
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_classifier(folder)


# -- preprocessing ------------------------------------------------------------------------------------


def test_crops_to_tensor_shape_dtype_range() -> None:
    meta = ModelMetadata(version="t")
    crops = [np.zeros((224, 224, 3), np.uint8), np.full((224, 224, 3), 255, np.uint8), *_crops(1)]
    tensor = crops_to_tensor(crops, meta)
    assert tensor.shape == (3, 3, 224, 224)
    assert tensor.dtype == torch.float32
    assert tensor.is_contiguous(memory_format=torch.channels_last)
    assert torch.all(tensor[0] == -1.0) and torch.all(tensor[1] == 1.0)
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


def test_crops_to_tensor_channel_order_and_normalisation() -> None:
    meta = ModelMetadata(version="t", mean=(0.25, 0.5, 0.75), std=(0.5, 0.25, 0.125))
    crop = np.zeros((8, 8, 3), np.uint8)
    crop[..., 0] = 255  # pure red
    tensor = crops_to_tensor([crop], meta, size=8)
    assert tensor[0, 0, 0, 0].item() == pytest.approx((1.0 - 0.25) / 0.5)
    assert tensor[0, 1, 0, 0].item() == pytest.approx((0.0 - 0.5) / 0.25)
    assert tensor[0, 2, 0, 0].item() == pytest.approx((0.0 - 0.75) / 0.125)


def test_crops_to_tensor_resizes_any_crop() -> None:
    meta = ModelMetadata(version="t", input_size=96)
    tensor = crops_to_tensor([np.zeros((50, 70, 3), np.uint8), np.zeros((300, 300, 3), np.uint8)], meta)
    assert tensor.shape == (2, 3, 96, 96)
    assert crops_to_tensor(_crops(1), meta, size=64).shape == (1, 3, 64, 64)


# -- inference ----------------------------------------------------------------------------------------


def test_fake_probability_range_and_count(classifier: Classifier) -> None:
    crops = _crops(5)
    probs = classifier.fake_probability(crops)
    assert probs.shape == (5,)
    assert np.all((probs >= 0) & (probs <= 1))
    assert classifier.fake_probability([]).shape == (0,)


def test_fake_probability_independent_of_batch_position(classifier: Classifier) -> None:
    crops = _crops(4, seed=1)
    forward = classifier.fake_probability(crops)
    backward = classifier.fake_probability(crops[::-1])[::-1]
    alone = np.array([classifier.fake_probability([c])[0] for c in crops[:2]])
    chunked = classifier.fake_probability(crops, batch_size=3)
    np.testing.assert_allclose(forward, backward, atol=1e-4)
    np.testing.assert_allclose(forward[:2], alone, atol=1e-4)
    np.testing.assert_allclose(forward, chunked, atol=1e-4)


def test_temperature_scales_the_logit(classifier: Classifier) -> None:
    crops = _crops(2, seed=2)
    warm = Classifier(
        net=classifier.net, meta=replace(classifier.meta, temperature=2.0), device=classifier.device
    )
    p1, p2 = classifier.fake_probability(crops), warm.fake_probability(crops)
    logit = np.log(p1 / (1 - p1))
    np.testing.assert_allclose(np.log(p2 / (1 - p2)), logit / 2.0, rtol=1e-6, atol=1e-9)


def test_layer_lookup(classifier: Classifier) -> None:
    assert classifier.layer("backbone.block8") is classifier.net.backbone.block8
    with pytest.raises(AttributeError):
        classifier.layer("backbone.nope")


def test_torch_threads_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_batchnorm_folding_keeps_the_scores(tmp_model) -> None:  # noqa: ANN001
    """Serving folds BatchNorm into the convolutions; the scores must not move."""
    import numpy as np

    from pipeline.model import load_classifier

    rng = np.random.default_rng(5)
    crops = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(4)]
    folded = load_classifier(tmp_model, fold=True)
    plain = load_classifier(tmp_model, fold=False)
    assert not any(type(m).__name__ == "BatchNorm2d" for m in folded.net.modules())
    assert any(type(m).__name__ == "BatchNorm2d" for m in plain.net.modules())
    np.testing.assert_allclose(folded.fake_probability(crops), plain.fake_probability(crops), atol=1e-5)


def test_bf16_autocast_on_cpu_tracks_fp32(tmp_model) -> None:  # noqa: ANN001
    """The AMP path (bf16 on CPU, the same autocast code CUDA runs with fp16) gives close scores."""
    import numpy as np

    from pipeline.model import load_classifier

    rng = np.random.default_rng(6)
    crops = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(4)]
    fp32 = load_classifier(tmp_model, precision="fp32").fake_probability(crops)
    bf16 = load_classifier(tmp_model, precision="bf16").fake_probability(crops)
    np.testing.assert_allclose(bf16, fp32, atol=2e-2)


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"),
                         [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch, amx: bool, avx512_bf16: bool,  # noqa: ANN001
                                                              expected: str) -> None:
    # Without bf16 units oneDNN emulates bf16 and the forward runs 3x slower than fp32 (docs/benchmarks.md).
    from pipeline.model import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, torch.device("cpu")) == explicit


def test_auto_precision_matches_this_cpu_and_reaches_the_loaded_classifier(tmp_model: Path) -> None:
    from pipeline.model import cpu_has_bf16_units

    classifier = load_classifier(tmp_model, precision="auto")
    assert classifier.precision == ("bf16" if cpu_has_bf16_units() else "fp32")


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_cuda_is_bf16_from_ampere_on(monkeypatch, capability: tuple[int, int],  # noqa: ANN001
                                                       expected: str) -> None:
    # torch.cuda.is_bf16_supported() says yes on a T4 or V100 too, where bf16 is emulated
    from pipeline.model import resolve_precision

    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability)
    assert resolve_precision("auto", torch.device("cuda:1")) == expected
    assert asked == [torch.device("cuda:1")]
