"""Monocular metric depth: a ViT encoder with a DPT decoder.

This is the architecture class QuartDepth quantizes (Depth Anything,
Metric3D): LayerNorm, softmax attention and GELU in the encoder, then the
DPT decoder reassembles tokens from four encoder layers into a feature
pyramid (1x1 projection + resampling), fuses it coarse-to-fine with
residual conv units, upsamples and predicts depth with a conv head.

The head ends in softplus: positive depth in metres, with no ceiling.
Attention is written as explicit matmul/softmax so that the exported graph
shows the ops (and the activation outliers) a quantizer must handle.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.errors import EdgekitError

from .registry import InputSpec, ZooEntry, register

HEAD_ACTIVATIONS = ("softplus", "sigmoid", "relu")


@dataclass(frozen=True)
class DepthConfig:
    input_size: int = 128
    patch: int = 8
    dim: int = 96
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    taps: tuple = (0, 1, 2, 3)          # encoder layers feeding the decoder
    features: int = 32                  # DPT fusion width
    out_channels: tuple = (24, 48, 96, 96)  # reassemble widths, fine -> coarse
    head_hidden: int = 32
    layer_scale: bool = False           # DINOv2-style per-channel residual scales (ls1, ls2)
    head_activation: str = "softplus"   # 'softplus' (metres, unbounded) | 'sigmoid' (x max_depth) | 'relu'
    max_depth: float = 20.0             # sigmoid head only


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        return self.proj(torch.matmul(weights, v).transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    def __init__(self, dim, init=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return x * self.gamma


class EncoderBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, layer_scale=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTEncoder(nn.Module):
    """Patch embedding + class token + learned positions + pre-norm blocks."""

    def __init__(self, cfg: DepthConfig):
        super().__init__()
        self.cfg = cfg
        grid = cfg.input_size // cfg.patch
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch, cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.layer_scale)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def _positions(self, h, w):
        grid = self.cfg.input_size // self.cfg.patch
        if (h, w) == (grid, grid):
            return self.pos_embed
        # Other input sizes: resample the learned grid (static at export time).
        cls, table = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        table = table.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, table.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, image):
        x = self.patch_embed(image)
        h, w = x.shape[-2:]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + self._positions(h, w)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.cfg.taps:
                taps.append(self.norm(x)[:, 1:])  # drop the class token
        return taps, (h, w)


class ResidualConvUnit(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Add the skip (after a residual unit), refine, upsample to the next size, project."""

    def __init__(self, features):
        super().__init__()
        self.skip_unit = ResidualConvUnit(features)
        self.refine_unit = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x, skip=None, size=None):
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = self.refine_unit(x)
        size = size or (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTDecoder(nn.Module):
    def __init__(self, cfg: DepthConfig):
        super().__init__()
        c = cfg.out_channels
        self.project = nn.ModuleList(nn.Conv2d(cfg.dim, ch, 1) for ch in c)
        # Token grid (1/patch) -> x4, x2, x1, x0.5 pyramid.
        self.resample = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], 4, 4), nn.ConvTranspose2d(c[1], c[1], 2, 2),
            nn.Identity(), nn.Conv2d(c[3], c[3], 3, 2, 1)])
        self.layer_rn = nn.ModuleList(nn.Conv2d(ch, cfg.features, 3, 1, 1, bias=False) for ch in c)
        self.fusion = nn.ModuleList(FusionBlock(cfg.features) for _ in c)
        self.head = nn.Sequential(
            nn.Conv2d(cfg.features, cfg.features // 2, 3, 1, 1))
        self.head_out = nn.Sequential(
            nn.Conv2d(cfg.features // 2, cfg.head_hidden, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.head_hidden, 1, 1))

        if cfg.head_activation not in HEAD_ACTIVATIONS:
            raise EdgekitError(f"unknown depth head_activation {cfg.head_activation!r}; "
                               f"valid: {', '.join(HEAD_ACTIVATIONS)}")
        self.activation, self.max_depth = cfg.head_activation, cfg.max_depth

    def forward(self, taps, grid, out_size):
        h, w = grid
        maps = []
        for tokens, project, resample, rn in zip(taps, self.project, self.resample, self.layer_rn):
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            maps.append(rn(resample(project(x))))
        x = self.fusion[3](maps[3], size=maps[2].shape[-2:])
        x = self.fusion[2](x, maps[2], size=maps[1].shape[-2:])
        x = self.fusion[1](x, maps[1], size=maps[0].shape[-2:])
        x = self.fusion[0](x, maps[0])
        x = F.interpolate(self.head(x), size=out_size, mode="bilinear", align_corners=True)
        x = self.head_out(x)
        if self.activation == "sigmoid":
            return torch.sigmoid(x) * self.max_depth
        if self.activation == "relu":
            return F.relu(x)
        return F.softplus(x)


class DepthModel(nn.Module):
    """image float32 [B,3,H,W] in [0,1] -> depth [B,1,H,W] in metres."""

    output_names = ("depth",)

    def __init__(self, cfg: DepthConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.encoder = ViTEncoder(cfg)
        self.decoder = DPTDecoder(cfg)

    def forward(self, image):
        taps, grid = self.encoder((image - self.mean) / self.std)
        return self.decoder(taps, grid, image.shape[-2:])


CONFIGS = {
    "tiny": DepthConfig(),
    # Depth-Anything-Small shape: ViT-S/14 (DINOv2, LayerScale), 518 input, DPT features 64,
    # metric head as Depth Anything V2 metric (sigmoid x max_depth 20 m, indoor).
    "small": DepthConfig(input_size=518, patch=14, dim=384, layers=12, heads=6, taps=(2, 5, 8, 11),
                         features=64, out_channels=(48, 96, 192, 384), head_hidden=32,
                         layer_scale=True, head_activation="sigmoid", max_depth=20.0),
}


# Official Depth Anything (V1/V2) checkpoint names -> ours. Order matters: first match wins.
_OFFICIAL_RENAMES = [
    (r"^pretrained\.patch_embed\.proj\.", "encoder.patch_embed."),
    (r"^pretrained\.blocks\.(\d+)\.mlp\.fc1\.", r"encoder.blocks.\1.mlp.0."),
    (r"^pretrained\.blocks\.(\d+)\.mlp\.fc2\.", r"encoder.blocks.\1.mlp.2."),
    (r"^pretrained\.", "encoder."),
    (r"^depth_head\.projects\.", "decoder.project."),
    (r"^depth_head\.resize_layers\.", "decoder.resample."),
    (r"^depth_head\.scratch\.layer(\d)_rn\.", lambda m: f"decoder.layer_rn.{int(m.group(1)) - 1}."),
    (r"^depth_head\.scratch\.refinenet(\d)\.resConfUnit1\.",
     lambda m: f"decoder.fusion.{int(m.group(1)) - 1}.skip_unit."),
    (r"^depth_head\.scratch\.refinenet(\d)\.resConfUnit2\.",
     lambda m: f"decoder.fusion.{int(m.group(1)) - 1}.refine_unit."),
    (r"^depth_head\.scratch\.refinenet(\d)\.out_conv\.", lambda m: f"decoder.fusion.{int(m.group(1)) - 1}.out_conv."),
    (r"^depth_head\.scratch\.output_conv1\.", "decoder.head.0."),
    (r"^depth_head\.scratch\.output_conv2\.", "decoder.head_out."),
]
_OFFICIAL_UNUSED = ("pretrained.mask_token",)  # DINOv2 training-only parameter


def rename_official(state: dict) -> dict:
    """Map an official Depth Anything state_dict (`pretrained.*`, `depth_head.*`) to our names."""
    import re

    if not any(k.startswith(("pretrained.", "depth_head.")) for k in state):
        return state  # already ours
    out = {}
    for key, value in state.items():
        if key in _OFFICIAL_UNUSED:
            continue
        for pattern, repl in _OFFICIAL_RENAMES:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                key = new
                break
        out[key] = value
    return out


def load_depth_anything(path, config: str = "small", head_activation: str | None = None) -> "DepthModel":
    """Depth model with weights from an official Depth Anything checkpoint (strict, weights_only).

    Relative-depth checkpoints end in ReLU (disparity): pass head_activation='relu'.
    """
    from dataclasses import replace

    from .checkpoint import load_state_dict_strict, read_state_file

    cfg = ENTRY.config(config)
    if head_activation is not None:
        cfg = replace(cfg, head_activation=head_activation)
    model = ENTRY.build(cfg)
    load_state_dict_strict(model, rename_official(read_state_file(path)), source=f"checkpoint {path}")
    return model


def _inputs(cfg: DepthConfig):
    return [InputSpec("image", (1, 3, cfg.input_size, cfg.input_size), "float32")]


ENTRY = register(ZooEntry(
    name="depth", task="depth", configs=CONFIGS, factory=DepthModel, inputs=_inputs,
    outputs=lambda cfg: list(DepthModel.output_names),
    extra={"rename_checkpoint": rename_official},
    description="ViT encoder + DPT decoder, metric depth (softplus head)"))
