"""The classifier: network registry, loading (safetensors + metadata, sha256 checked), preprocessing, forward.

`crops_to_tensor` is THE preprocessing: training and serving both call it, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from pipeline.errors import ModelLoadError
from pipeline.faces import resize_square

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "model.json"


@dataclass(frozen=True)
class ModelMetadata:
    version: str
    architecture: str = "inception_resnet_v1"
    input_size: int = 224
    crop_margin: float = 0.0  # added per side to the MTCNN box, as a fraction of its long side
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    temperature: float = 1.0
    logit_bias: float = 0.0  # calibrated P(fake) = sigmoid(logit / temperature + logit_bias)
    threshold_fake: float = 0.9  # calibrated P(fake) at or above: verdict `fake`
    threshold_real: float = 0.5  # calibrated P(fake) at or below: verdict `real`; between: `uncertain`
    gradcam_layer: str = "backbone.block8"
    # Faces whose box's longer side is under this many pixels get no verdict of their own (`too_small`) and
    # do not count toward the image's: the model never saw faces that small. 0 = no limit.
    min_face_side: int = 0
    tta_flip: bool = False  # the logit is the mean of the crop's and its mirror image's (two forwards)
    sha256: str = ""  # of the weights file
    placeholder: bool = False
    training_data: str = ""
    terms: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        known = {f for f in cls.__dataclass_fields__}
        unknown = {k: v for k, v in data.items() if k not in known}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        meta = cls(**values)
        return replace(meta, extra={**meta.extra, **unknown}) if unknown else meta


class DetectorNet(nn.Module):
    """A real/fake network: one logit per image, plus an optional training-only manipulation-mask output."""

    mask_head: nn.Module | None

    def forward_with_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, 1)."""
        return self.forward_with_mask(x)[0]

    # Grad-CAM from the classification forward's own activations (pipeline.explain.gradcam_from_features):
    # a network that can be split at a stage returns that stage's output beside its logits, and computes from
    # such an output a logit whose gradient with respect to it is the full logit's.
    def can_split(self, stage: str) -> bool:
        return False

    def forward_split(self, stage: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the output of `stage`) in one forward."""
        raise NotImplementedError

    def forward_from(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tail_modules(self, stage: str) -> list[nn.Module]:
        """The modules a backward from the logit through forward_from reaches."""
        raise NotImplementedError


class DeepfakeNet(DetectorNet):
    """InceptionResnetV1 with one logit (P(fake)) and an optional auxiliary manipulation-mask head.

    The mask head reads the 896-channel map after `repeat_2` and is used only in training.
    """

    def __init__(self, mask_head: bool = False, dropout: float = 0.2) -> None:
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        self.backbone = InceptionResnetV1(classify=True, num_classes=1, dropout_prob=dropout)
        self.mask_head = nn.Conv2d(896, 1, kernel_size=1) if mask_head else None

    # The backbone's layers in forward order, up to the pooled features; the head follows.
    STAGES = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "conv2d_4b",
              "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8", "avgpool_1a")

    def forward_with_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = None
        for name in self.STAGES:
            x = getattr(self.backbone, name)(x)
            if name == "repeat_2" and self.mask_head is not None:
                mask = self.mask_head(x)
        return self._head(x), mask

    def forward_until(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        """The output of `stage` (a name in STAGES): the network's trunk alone."""
        for name in self.STAGES[: self.STAGES.index(stage) + 1]:
            x = getattr(self.backbone, name)(x)
        return x

    def forward_from(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        """The logits from the output of `stage` (a name in STAGES): the network's tail alone. Grad-CAM uses
        it to explain a face from the activations its classification forward already computed."""
        for name in self.STAGES[self.STAGES.index(stage) + 1 :]:
            x = getattr(self.backbone, name)(x)
        return self._head(x)

    def can_split(self, stage: str) -> bool:
        return stage in self.STAGES

    def forward_split(self, stage: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_until(stage, x)
        return self.forward_from(stage, features), features

    def tail_modules(self, stage: str) -> list[nn.Module]:
        names = (*self.STAGES[self.STAGES.index(stage) + 1 :], "last_linear", "last_bn", "logits")
        return [getattr(self.backbone, name) for name in names]

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.dropout(x)
        x = b.last_linear(x.flatten(1))
        x = b.last_bn(x)
        return b.logits(x)


class PooledTapsNet(DetectorNet):
    """A pretrained trunk with one logit on the global-average-pooled outputs of several of its blocks: the
    middle of a face-identity network carries more of the manipulation signal than its end. Subclasses name
    the trunk, the blocks tapped (`TAPS`, with their channel counts) and the one the mask head reads."""

    TAPS: tuple[int, ...] = ()
    TAP_CHANNELS: tuple[int, ...] = ()
    MASK_TAP = 0

    def __init__(self, mask_head: bool = False, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = self._trunk()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(sum(self.TAP_CHANNELS), 1)
        mask_channels = self.TAP_CHANNELS[self.TAPS.index(self.MASK_TAP)]
        self.mask_head = nn.Conv2d(mask_channels, 1, kernel_size=1) if mask_head else None

    def _trunk(self) -> nn.Module:
        raise NotImplementedError

    def forward_with_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        taps = self.backbone(x, self.TAPS)
        pooled = torch.cat([t.mean(dim=(2, 3)) for t in taps], dim=1)
        mask = self.mask_head(taps[self.TAPS.index(self.MASK_TAP)]) if self.mask_head is not None else None
        return self.head(self.dropout(pooled)), mask

    def load_pretrained(self, folder: Path) -> None:
        """The trunk's weights, converted from the original file(s) in `folder` (sha256 checked)."""
        raise NotImplementedError

    def _block(self, stage: str) -> int | None:
        prefix, _, number = stage.partition(".")
        blocks = getattr(self.backbone, "blocks", None)
        if prefix != "blocks" or not number.isdigit() or blocks is None or int(number) >= len(blocks):
            return None
        return int(number)

    def can_split(self, stage: str) -> bool:
        index = self._block(stage)
        return index is not None and index <= max(self.TAPS)

    def forward_split(self, stage: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._block(stage)
        assert index is not None
        order = sorted({*self.TAPS, index})
        taps = self.backbone(x, tuple(order))
        pooled = torch.cat([taps[order.index(t)].mean(dim=(2, 3)) for t in self.TAPS], dim=1)
        return self.head(self.dropout(pooled)), taps[order.index(index)]

    def forward_from(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        """The logit less the share of the taps before `stage` (a constant here, so the gradient with respect to
        `x` is the full logit's), from the output `x` of block `stage`."""
        index = self._block(stage)
        assert index is not None
        blocks = cast(nn.ModuleList, self.backbone.blocks)
        pooled, start, width, current = [], 0, 0, index
        for tap, channels in zip(self.TAPS, self.TAP_CHANNELS, strict=True):  # TAPS ascend
            if tap < index:
                start += channels
                continue
            for block in blocks[current + 1 : tap + 1]:
                x = block(x)
            current = tap
            pooled.append(x.mean(dim=(2, 3)))
            width += channels
        weight = self.head.weight[:, start : start + width]
        return torch.nn.functional.linear(self.dropout(torch.cat(pooled, dim=1)), weight, self.head.bias)

    def tail_modules(self, stage: str) -> list[nn.Module]:
        index = self._block(stage)
        assert index is not None
        return [*cast(nn.ModuleList, self.backbone.blocks)[index + 1 : max(self.TAPS) + 1], self.head]


class FaceResNet(PooledTapsNet):
    """faceres-deep: MobileNetV1 trained on VGGFace2 for face identification (pipeline.backbones)."""

    TAPS = (4, 10, 12)  # Keras's conv_pw_5, 11 and 13
    TAP_CHANNELS = (256, 512, 1024)
    MASK_TAP = 10

    def _trunk(self) -> nn.Module:
        from pipeline.backbones import MobileNetV1Trunk

        return MobileNetV1Trunk()

    def load_pretrained(self, folder: Path) -> None:
        from pipeline.backbones import faceres_trunk_state

        self.backbone.load_state_dict(faceres_trunk_state(folder))


class MobileNetV2Net(PooledTapsNet):
    """torchvision's MobileNetV2 trained on ImageNet (pipeline.backbones), tapped at feature blocks 6, 13, 18."""

    TAPS = (6, 13, 18)
    TAP_CHANNELS = (32, 96, 1280)
    MASK_TAP = 13

    def _trunk(self) -> nn.Module:
        from pipeline.backbones import MobileNetV2Trunk

        return MobileNetV2Trunk()

    def load_pretrained(self, folder: Path) -> None:
        from pipeline.backbones import mobilenet_v2_trunk_state

        self.backbone.load_state_dict(mobilenet_v2_trunk_state(folder / "mobilenet_v2_imagenet_int8.pt"))


ARCHITECTURES: dict[str, Callable[..., DetectorNet]] = {
    "inception_resnet_v1": DeepfakeNet,
    "faceres_mobilenet_v1": FaceResNet,
    "mobilenet_v2_imagenet": MobileNetV2Net,
}

# What a model of each architecture is served with unless its metadata says otherwise. faceres-deep takes
# 0-255 pixels minus the VGGFace2 means (its first convolution converted to take RGB); Grad-CAM reads its
# block 11 (14 x 14 at 224 px: block 13's 7 x 7 is too coarse to point at a face part).
ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "inception_resnet_v1": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "gradcam_layer": "backbone.block8"},
    "faceres_mobilenet_v1": {
        "mean": tuple(round(m / 255.0, 9) for m in (131.0912, 103.8827, 91.4953)),
        "std": (1 / 255.0, 1 / 255.0, 1 / 255.0),
        "gradcam_layer": "backbone.blocks.10",
    },
    "mobilenet_v2_imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                              "gradcam_layer": "backbone.blocks.13"},
}


def build_network(architecture: str, **kwargs: Any) -> DetectorNet:
    try:
        return ARCHITECTURES[architecture](**kwargs)
    except KeyError:
        raise ModelLoadError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}") from None


def crops_to_tensor(crops: Sequence[np.ndarray], meta: ModelMetadata, size: int | None = None) -> torch.Tensor:
    """uint8 RGB crops -> normalised float tensor (N, 3, S, S), channels_last. Shared by training and serving.

    `size` defaults to the model's input size; training passes its window size explicitly.
    """
    size = size or meta.input_size
    pixels = torch.from_numpy(np.stack([resize_square(c, size) for c in crops])).permute(0, 3, 1, 2)  # NHWC memory
    mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
    # (x / 255 - mean) / std in one pass over the uint8 pixels, as x / (255 std) - mean / std
    tensor = torch.addcdiv(-mean / std, pixels, 255.0 * std)
    return tensor.contiguous(memory_format=torch.channels_last)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Classifier:
    """A loaded network plus its metadata, ready for batched inference on one device."""

    net: DetectorNet
    meta: ModelMetadata
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)

    @property
    def version(self) -> str:
        return self.meta.version

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # page-locked host memory, so the copy overlaps the GPU's work
            batch = batch.pin_memory()
        with torch.inference_mode(), self.autocast():
            batch = batch.to(self.device, non_blocking=True)
            out = self.net(batch).float()
            if self.meta.tta_flip:
                out = (out + self.net(batch.flip(3)).float()) / 2
        return out.squeeze(1).cpu()

    @property
    def split_stage(self) -> str | None:
        """The backbone stage named by `gradcam_layer` when the network can be resumed from it
        (DetectorNet.forward_from), else None: Grad-CAM then needs a full forward of its own."""
        prefix, _, stage = self.meta.gradcam_layer.partition(".")
        if prefix == "backbone" and self.net.can_split(stage):
            return stage
        return None

    def fake_probability(self, crops: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Calibrated P(fake) for each crop, in one forward pass per `batch_size` crops."""
        return self.fake_probability_with_features(crops, batch_size, keep=False)[0]

    def fake_probability_with_features(
        self, crops: Sequence[np.ndarray], batch_size: int = 64, keep: bool = True
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """P(fake) for each crop, plus (when `keep` and the network can be split) the activations of the
        Grad-CAM layer from the same forward, (N, C, h, w) on the classifier's device, for
        `explain.gradcam_from_features`."""
        if not crops:
            return np.zeros(0, dtype=np.float64), None
        stage = self.split_stage if keep and not self.meta.tta_flip else None
        outs: list[torch.Tensor] = []
        captured: list[torch.Tensor] = []
        for i in range(0, len(crops), batch_size):
            batch = crops_to_tensor(crops[i : i + batch_size], self.meta)
            if stage is None:
                outs.append(self.logits(batch))
                continue
            if self.device.type == "cuda":
                batch = batch.pin_memory()
            # No hook on the shared network: two screening threads may run this at once.
            with torch.inference_mode(), self.autocast():
                out, features = self.net.forward_split(stage, batch.to(self.device, non_blocking=True))
            outs.append(out.float().squeeze(1).cpu())
            captured.append(features)
        logits = torch.cat(outs).double()
        probs = torch.sigmoid(logits / self.meta.temperature + self.meta.logit_bias).numpy()
        if stage is None:
            return probs, None
        with torch.inference_mode(False):
            kept = torch.cat(captured)  # made outside inference mode: a normal tensor that autograd may use
        return probs, kept

    def layer(self, dotted: str) -> nn.Module:
        module: nn.Module = self.net
        for part in dotted.split("."):
            module = getattr(module, part)
        return module


def save_model(net: nn.Module, meta: ModelMetadata, folder: Path, half: bool = False) -> ModelMetadata:
    """Write model.safetensors (without training-only heads) and model.json with its sha256."""
    from safetensors.torch import save_file

    if isinstance(net, DeepfakeNet) and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        raise ValueError("this network has its BatchNorm folded (a serving copy); save the unfolded one")
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous()
        for k, v in net.state_dict().items()
        if not k.startswith("mask_head.")
    }
    weights = folder / WEIGHTS_FILE
    save_file(state, str(weights), metadata={"version": meta.version})
    meta = replace(meta, sha256=file_sha256(weights))
    (folder / METADATA_FILE).write_text(meta.to_json() + "\n")
    return meta


def read_metadata(folder: Path) -> ModelMetadata:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise ModelLoadError(f"no model metadata at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError("metadata must be a JSON object")
        return ModelMetadata.from_dict(data)
    except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelLoadError(f"model metadata {path} is invalid: {exc}") from None


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm into the convolution before it (same outputs within float rounding,
    one op fewer per layer at inference). Serving only: a folded network cannot be trained further."""
    from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in net.modules():
        if isinstance(module, BasicConv2d) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return net


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; asking for CUDA without one is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for, but torch sees no CUDA GPU; use cpu or auto")
    return resolved


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX-512 BF16). Without them oneDNN converts every
    bf16 operand to fp32 and back: on an Ice Lake Xeon (AVX-512, no BF16) bf16 autocast ran the classifier at
    10.2 crops/s against 33.6 in fp32; with AMX it ran 3x faster than fp32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast where `device` computes bf16 natively (a CPU with bf16 units; a CUDA GPU of compute
    capability 8.0 or later), else fp32 on a CPU and fp16 on an older GPU. The shipped model's validation AUC was
    measured in fp32 and bf16; fp16 is the usual CUDA AMP, not measured here (no GPU lent)."""
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        # torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (before Ampere)
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_bf16_units() else "fp32"


def load_classifier(
    folder: Path | str, device: str | torch.device = "cpu", precision: str = "fp32", fold: bool = True
) -> Classifier:
    """Load a model folder; refuse weights whose sha256 differs from the metadata's.

    `fold` folds BatchNorm into the convolutions for serving; pass False to get a trainable network.
    `precision` is the autocast of inference: fp32, bf16, fp16, or auto (resolve_precision)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_metadata(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"no weights at {weights}")
    actual = file_sha256(weights)
    if not meta.sha256 or actual != meta.sha256:
        raise ModelLoadError(
            f"sha256 mismatch for {weights}: metadata says {meta.sha256 or '(none)'}, file is {actual}"
        )
    net = build_network(meta.architecture)
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"weights do not fit {meta.architecture}: missing={missing[:5]} unexpected={unexpected[:5]}")
    device = resolve_device(device)
    net = net.eval()
    if fold:
        fold_batchnorm(net)
    net = net.to(device).to(memory_format=torch.channels_last)
    precision = resolve_precision(precision, device)
    log.info("model loaded version=%s sha256=%s device=%s precision=%s", meta.version, actual[:12], device, precision)
    return Classifier(net=net, meta=meta, device=device, precision=precision)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None leaves it)."""
    if not count:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_placeholder(folder: Path, seed: int = 20261123) -> ModelMetadata:
    """A randomly initialised network from a fixed seed. NOT A DETECTOR: it exists so the pipeline runs
    before a trained model is installed, and its metadata says so."""
    torch.manual_seed(seed)
    net = build_network("inception_resnet_v1").eval()
    meta = ModelMetadata(
        version=f"placeholder-seed{seed}",
        placeholder=True,
        threshold_fake=0.9,
        threshold_real=0.5,
        training_data="none: random weights from a fixed seed (placeholder, not a detector)",
    )
    return save_model(net, meta, Path(folder))
