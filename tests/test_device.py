"""The device path without a GPU: every tensor the networks see is on the classifier's device, autocast
really runs the convolutions in half precision (bf16 and fp16 on the CPU, as AMP does on CUDA), and the
scores agree with fp32. A CUDA request on a machine without one is a clear error, not a crash mid-batch.
No GPU was lent to this project's machines, so this is the part of the CUDA path that runs here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.errors import ModelLoadError
from pipeline.faces import FaceDetector
from pipeline.model import load_classifier, resolve_device
from pipeline.screen import ScreenConfig, Screener, ScreenItem
from workers.settings import SHIPPED_MODEL


def _frame(astronaut: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_half_precision_on_the_classifier_device(precision: str, astronaut: np.ndarray) -> None:
    fp32 = load_classifier(SHIPPED_MODEL, precision="fp32")
    half = dataclasses.replace(fp32, precision=precision)
    seen: list[tuple[torch.device, torch.dtype]] = []
    conv_dtypes: list[torch.dtype] = []
    params = next(half.net.parameters())
    first = next(m for m in half.net.modules() if isinstance(m, torch.nn.Conv2d))  # the network's first layer
    pre = first.register_forward_pre_hook(lambda _m, args: seen.append((args[0].device, args[0].dtype)))
    conv = first.register_forward_hook(lambda _m, _a, out: conv_dtypes.append(out.dtype))
    screener = Screener(half, ScreenConfig(heatmaps="all"), detector=FaceDetector(device=half.device))
    try:
        [verdict] = screener.screen_batch([ScreenItem("a.jpg", _frame(astronaut))])
    finally:
        pre.remove()
        conv.remove()
    assert verdict.status == "scored" and verdict.faces[0].heatmap_jpeg is not None
    assert seen and all(device == params.device == half.device for device, _ in seen)
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float16}
    plain = Screener(fp32, ScreenConfig(heatmaps="none"), detector=FaceDetector(device=fp32.device))
    [reference] = plain.screen_batch([ScreenItem("a.jpg", _frame(astronaut))])
    assert verdict.fake_probability == pytest.approx(reference.fake_probability, abs=0.02)


def test_devices_resolve_or_fail_clearly() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_classifier(SHIPPED_MODEL, device="cuda")
