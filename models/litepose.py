"""LitePose (Wang et al., CVPR 2022): efficient bottom-up multi-person pose.

Backbone: a MobileNetV2-style stem, then four stages of inverted-residual
blocks (expansion 6, 7x7 depthwise). Head: the Fusion Deconv Head, which
upsamples a "refined" path and adds a deconvolved "raw" backbone feature at
each step, and predicts from both paths with separable 5x5 convolutions.

Module names follow the official implementation (mit-han-lab/litepose) so
that its state_dicts load strictly: `first.*`, `stage.{s}.{b}.*`,
`deconv_refined.{i}`, `deconv_raw.{i}`, `deconv_bnrelu.{i}`,
`final_refined.{j}`, `final_raw.{j}`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from .registry import InputSpec, ZooEntry, register


@dataclass(frozen=True)
class LitePoseConfig:
    input_size: int          # square input, pixels
    stem_channels: int       # C0, output of the stem
    stage_channels: tuple    # four stage widths
    stage_blocks: tuple = (6, 8, 10, 10)
    stage_strides: tuple = (2, 2, 2, 1)
    deconv_channels: tuple = (16, 24, 24)  # filters of the three deconv steps
    num_joints: int = 17     # COCO skeleton
    expansion: int = 6
    kernel: int = 7


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2 channel rounding (never drops more than 10%)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise -> 1x1 project; residual when shapes match."""

    def __init__(self, cin, cout, stride, kernel=7, expansion=6):
        super().__init__()
        hidden = make_divisible(round(cin * expansion), 8)
        self.inv = ConvBNReLU6(cin, hidden, kernel=1)
        self.depth_conv = ConvBNReLU6(hidden, hidden, kernel=kernel, stride=stride, groups=hidden)
        self.point_conv = nn.Sequential(nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
                                        nn.BatchNorm2d(cout))
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.point_conv(self.depth_conv(self.inv(x)))
        return out + x if self.use_residual else out


class SeparableConv(nn.Module):
    """Depthwise kxk + BN + ReLU, then pointwise 1x1 (no bias), as in the official head."""

    def __init__(self, cin, cout, kernel=5):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, kernel, 1, kernel // 2, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, 1, 0, bias=False))

    def forward(self, x):
        return self.conv(x)


def _deconv(cin, cout):
    return nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=False)


class LitePose(nn.Module):
    """Returns (heatmaps_tags [1,2J,H/4,W/4], heatmaps_hr [1,J,H/2,W/2])."""

    output_names = ("heatmaps_tags", "heatmaps_hr")

    def __init__(self, cfg: LitePoseConfig):
        super().__init__()
        self.cfg = cfg
        joints = cfg.num_joints
        self.first = nn.Sequential(
            ConvBNReLU6(3, 32, kernel=3, stride=2),
            ConvBNReLU6(32, 32, kernel=3, stride=1, groups=32),
            nn.Conv2d(32, cfg.stem_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cfg.stem_channels))
        channels = [cfg.stem_channels]
        stages = []
        cin = cfg.stem_channels
        for width, blocks, stride in zip(cfg.stage_channels, cfg.stage_blocks, cfg.stage_strides):
            cout = make_divisible(width, 8)
            layer = []
            for b in range(blocks):
                layer.append(InvertedResidual(cin, cout, stride if b == 0 else 1,
                                              kernel=cfg.kernel, expansion=cfg.expansion))
                cin = cout
            stages.append(nn.Sequential(*layer))
            channels.append(cout)
        self.stage = nn.ModuleList(stages)
        self.channels = channels

        # Fusion Deconv Head. Step i deconvolves the refined path and the raw
        # backbone feature channels[-i-2]; predictions after steps 1 and 2 use
        # the refined path and the raw feature channels[-i-3].
        refined, raw, bnrelu = [], [], []
        cin = channels[-1]
        for i, planes in enumerate(cfg.deconv_channels):
            refined.append(_deconv(cin, planes))
            raw.append(_deconv(channels[-i - 2], planes))
            bnrelu.append(nn.Sequential(nn.BatchNorm2d(planes), nn.ReLU(inplace=True)))
            cin = planes
        self.deconv_refined = nn.ModuleList(refined)
        self.deconv_raw = nn.ModuleList(raw)
        self.deconv_bnrelu = nn.ModuleList(bnrelu)
        head_outputs = [2 * joints, joints]  # heatmaps + tags at 1/4, heatmaps at 1/2
        self.final_refined = nn.ModuleList(
            SeparableConv(cfg.deconv_channels[i], head_outputs[i - 1]) for i in (1, 2))
        self.final_raw = nn.ModuleList(
            SeparableConv(channels[-i - 3], head_outputs[i - 1]) for i in (1, 2))

    def forward(self, image):
        features = [self.first(image)]
        for stage in self.stage:
            features.append(stage(features[-1]))
        refined, raw = features[-1], features[-2]
        outputs = []
        for i in range(len(self.deconv_refined)):
            refined = self.deconv_bnrelu[i](self.deconv_refined[i](refined) + self.deconv_raw[i](raw))
            raw = features[-i - 3]
            if i > 0:
                outputs.append(self.final_refined[i - 1](refined) + self.final_raw[i - 1](raw))
        return tuple(outputs)


# Paper variants: widths from mit-han-lab/litepose mobile_configs/search-*.json.
CONFIGS = {
    "tiny": LitePoseConfig(input_size=128, stem_channels=16, stage_channels=(16, 32, 48, 64),
                           stage_blocks=(2, 2, 2, 2), deconv_channels=(24, 24, 24)),
    "xs": LitePoseConfig(input_size=256, stem_channels=16, stage_channels=(16, 32, 48, 80),
                         deconv_channels=(16, 24, 24)),
    "s": LitePoseConfig(input_size=448, stem_channels=16, stage_channels=(16, 32, 48, 120),
                        deconv_channels=(32, 24, 32)),
    "m": LitePoseConfig(input_size=448, stem_channels=16, stage_channels=(24, 48, 72, 120),
                        deconv_channels=(64, 40, 32)),
    "l": LitePoseConfig(input_size=512, stem_channels=24, stage_channels=(24, 64, 96, 160),
                        deconv_channels=(64, 40, 32)),
}


def adapt_to_checkpoint(cfg: LitePoseConfig, state: dict) -> LitePoseConfig:
    """Take the joint count from the checkpoint (COCO 17, CrowdPose 14)."""
    key = "final_raw.1.conv.3.weight"  # pointwise conv of the 1/2-resolution heatmap head
    if key in state and state[key].ndim == 4 and state[key].shape[0] != cfg.num_joints:
        return replace(cfg, num_joints=int(state[key].shape[0]))
    return cfg


def load_official(path, variant: str = "xs") -> LitePose:
    """A LitePose variant with weights from an official (mit-han-lab) checkpoint file.

    Accepts a plain state_dict, a DataParallel (`module.`-prefixed) one, or a
    dict wrapping it under `state_dict`; loads strictly (one-line error naming
    missing/unexpected keys); reads torch files with weights_only=True.
    """
    return ENTRY.load(variant, path)


def _inputs(cfg: LitePoseConfig):
    return [InputSpec("image", (1, 3, cfg.input_size, cfg.input_size), "float32")]


ENTRY = register(ZooEntry(
    name="litepose", task="pose", configs=CONFIGS, factory=LitePose, inputs=_inputs,
    outputs=lambda cfg: list(LitePose.output_names), extra={"adapt_config": adapt_to_checkpoint},
    description="LitePose bottom-up pose (7x7 inverted residuals, fusion deconv head)"))
