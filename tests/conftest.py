"""Shared fixtures. torch gets one thread: a training job shares this two-CPU machine."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings as hypothesis_settings
from PIL import Image

torch.set_num_threads(1)

ImageFactory = Callable[..., bytes]


def encode_image(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """Pixels (H x W x 3 uint8, or a PIL image) encoded as `fmt` bytes."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_factory() -> ImageFactory:
    return encode_image


@pytest.fixture(scope="session")
def tmp_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A placeholder model folder (random weights from a fixed seed): model.safetensors + model.json."""
    from pipeline.model import make_placeholder

    folder = tmp_path_factory.mktemp("placeholder-model")
    make_placeholder(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # 94 MB; pytest keeps old temp folders around


@pytest.fixture(scope="session")
def classifier(tmp_model: Path):  # noqa: ANN201 - pipeline.model.Classifier, imported lazily
    from pipeline.model import load_classifier

    return load_classifier(tmp_model)


@pytest.fixture(scope="session")
def detector():  # noqa: ANN201 - pipeline.faces.FaceDetector, imported lazily
    from pipeline.faces import FaceDetector

    return FaceDetector()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A 512 x 512 RGB photo with one frontal face (MTCNN finds it)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


# Fuzz budgets: `ci` (the default, inside make test) stays small; `make fuzz` runs the `long` profile.
hypothesis_settings.register_profile("ci", max_examples=200)
hypothesis_settings.register_profile("long", max_examples=20_000)
hypothesis_settings.load_profile("ci")
