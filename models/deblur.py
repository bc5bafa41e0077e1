"""DeepRFT-style deblurring: a MIMO-UNet whose residual blocks see frequencies.

Each Res FFT-ReLU block computes y = x + spatial(x) + freq(x):
spatial is conv-ReLU-conv; freq takes the 2-D real FFT, stacks real and
imaginary parts as channels, applies 1x1 conv, ReLU, 1x1 conv, and returns
through the inverse real FFT. The ReLU in the frequency domain is what lets
the block model blur kernels of any extent.

`fft_mode` switches the transform implementation:
- "torch": torch.fft.rfft2 / irfft2 (any size);
- "matmul": the same transforms as matrix products with constant cos/sin
  DFT matrices at a fixed window size. ONNX export needs this form: torch's
  exporter has no rfft2 symbolic, and onnxruntime rejects the DFT op the
  dynamo exporter emits for the inverse. Both use "ortho" normalisation and
  agree to float32 rounding.

MIMO-UNet: three scales; the half- and quarter-resolution images enter
through shallow conv modules (SCM) merged by feature attention (FAM); the
decoder emits a restored image at every scale (training uses all three,
`forward` returns the full-resolution one) and the skip connections are
mixed across scales by asymmetric feature fusion (AFF).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.errors import EdgekitError

from .registry import InputSpec, ZooEntry, register

FFT_MODES = ("torch", "matmul")


@dataclass(frozen=True)
class DeblurConfig:
    base: int = 16          # channels at full resolution (x2, x4 deeper)
    blocks: int = 1         # Res FFT-ReLU blocks per encoder/decoder stage
    window: int = 64        # input size; fixes the DFT matrices of the matmul form
    fft_mode: str = "torch"


def dft_matrices(n: int):
    """Orthonormal real-DFT matrices for length n.

    Returns (cos_fwd, sin_fwd) [n, n//2+1] so that rfft(x) = x@cos_fwd - i x@sin_fwd,
    (cos_full, sin_full) [n, n] for the full complex DFT, and (cos_inv, sin_inv)
    [n//2+1, n] with the Hermitian weights so that irfft(Zr + iZi) = Zr@cos_inv - Zi@sin_inv.
    """
    half = n // 2 + 1
    idx = torch.arange(n, dtype=torch.float64)
    freq = torch.arange(half, dtype=torch.float64)
    scale = 1.0 / math.sqrt(n)
    angle_half = 2 * math.pi * idx[:, None] * freq[None, :] / n           # [n, half]
    angle_full = 2 * math.pi * idx[:, None] * idx[None, :] / n            # [n, n]
    weight = torch.full((half,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0  # Nyquist bin appears once
    cos_inv = (weight[:, None] * torch.cos(angle_half.T)) * scale
    sin_inv = (weight[:, None] * torch.sin(angle_half.T)) * scale
    mats = dict(cos_fwd=torch.cos(angle_half) * scale, sin_fwd=torch.sin(angle_half) * scale,
                cos_full=torch.cos(angle_full) * scale, sin_full=torch.sin(angle_full) * scale,
                cos_inv=cos_inv, sin_inv=sin_inv)
    return {k: v.float() for k, v in mats.items()}


class MatmulRFFT2(nn.Module):
    """rfft2 / irfft2 ("ortho") over the last two dims at a fixed (h, w), as matmuls."""

    def __init__(self, h: int, w: int):
        super().__init__()
        self.size = (h, w)
        rows, cols = dft_matrices(h), dft_matrices(w)
        # Non-persistent: derived from the window size, never stored in checkpoints.
        for name in ("cos_fwd", "sin_fwd", "cos_inv", "sin_inv"):
            self.register_buffer(f"w_{name}", cols[name], persistent=False)
        for name in ("cos_full", "sin_full"):
            self.register_buffer(f"h_{name}", rows[name], persistent=False)

    def _check(self, x):
        if tuple(x.shape[-2:]) != self.size:
            raise EdgekitError(f"deblur fft_mode='matmul' is built for {self.size[0]}x{self.size[1]} "
                               f"features, got {tuple(x.shape[-2:])}; call prepare_for_export(image) for other sizes")

    def forward_transform(self, x):
        """x [.., h, w] -> (real, imag) [.., h, w//2+1]."""
        self._check(x)
        a, b = x @ self.w_cos_fwd, x @ self.w_sin_fwd          # rfft over w: a - i b
        real = self.h_cos_full @ a - self.h_sin_full @ b
        imag = -(self.h_sin_full @ a + self.h_cos_full @ b)
        return real, imag

    def inverse_transform(self, real, imag):
        """(real, imag) [.., h, w//2+1] -> x [.., h, w]."""
        zr = self.h_cos_full @ real - self.h_sin_full @ imag    # inverse full DFT over h
        zi = self.h_sin_full @ real + self.h_cos_full @ imag
        return zr @ self.w_cos_inv - zi @ self.w_sin_inv        # inverse real DFT over w


class ResFFTBlock(nn.Module):
    """y = x + conv-ReLU-conv(x) + irfft2(conv1x1-ReLU-conv1x1(rfft2(x)))."""

    def __init__(self, channels: int, size: int, fft_mode: str = "torch"):
        super().__init__()
        self.spatial = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channels, channels, 3, 1, 1))
        self.freq = nn.Sequential(nn.Conv2d(2 * channels, 2 * channels, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(2 * channels, 2 * channels, 1))
        self.dft = MatmulRFFT2(size, size)
        self.fft_mode = fft_mode

    def set_window(self, h: int, w: int):
        """Rebuild the DFT matrices for features of size h x w (matmul mode)."""
        if self.dft.size != (h, w):
            self.dft = MatmulRFFT2(h, w).to(self.freq[0].weight.device)

    def frequency_branch(self, x):
        h, w = x.shape[-2:]
        if self.fft_mode == "matmul":
            real, imag = self.dft.forward_transform(x)
        else:
            spec = torch.fft.rfft2(x, norm="ortho")
            real, imag = spec.real, spec.imag
        y = self.freq(torch.cat([real, imag], dim=1))
        real, imag = y.chunk(2, dim=1)
        if self.fft_mode == "matmul":
            return self.dft.inverse_transform(real, imag)
        return torch.fft.irfft2(torch.complex(real, imag), s=(h, w), norm="ortho")

    def forward(self, x):
        return x + self.spatial(x) + self.frequency_branch(x)


def conv(cin, cout, kernel=3, stride=1, relu=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ShallowConvModule(nn.Module):
    """Features straight from a downscaled input image (MIMO-UNet's SCM)."""

    def __init__(self, out_channels):
        super().__init__()
        mid = out_channels // 4
        self.body = nn.Sequential(conv(3, mid, 3), conv(mid, 2 * mid, 1), conv(2 * mid, 2 * mid, 3),
                                  conv(2 * mid, out_channels - 3, 1))
        self.merge = conv(out_channels, out_channels, 1, relu=False)

    def forward(self, image):
        return self.merge(torch.cat([image, self.body(image)], dim=1))


class FeatureAttention(nn.Module):
    """FAM: x + conv(x * scm) — the image features gate the encoder features."""

    def __init__(self, channels):
        super().__init__()
        self.merge = conv(channels, channels, 3, relu=False)

    def forward(self, x, scm):
        return x + self.merge(x * scm)


class AsymmetricFusion(nn.Module):
    """AFF: mix the encoder features of all three scales for one decoder skip."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.body = nn.Sequential(conv(in_channels, out_channels, 1), conv(out_channels, out_channels, 3, relu=False))

    def forward(self, *features):
        return self.body(torch.cat(features, dim=1))


class DeblurNet(nn.Module):
    """image float32 [B,3,H,W] in [0,1] -> restored [B,3,H,W] = input + predicted correction."""

    output_names = ("restored",)

    def __init__(self, cfg: DeblurConfig):
        super().__init__()
        if cfg.fft_mode not in FFT_MODES:
            raise EdgekitError(f"unknown fft_mode {cfg.fft_mode!r}; valid: {', '.join(FFT_MODES)}")
        self.cfg = cfg
        c, n, s = cfg.base, cfg.blocks, cfg.window

        def stage(ch, size):
            return nn.Sequential(*(ResFFTBlock(ch, size, cfg.fft_mode) for _ in range(n)))

        self.encoders = nn.ModuleList([stage(c, s), stage(2 * c, s // 2), stage(4 * c, s // 4)])
        self.decoders = nn.ModuleList([stage(4 * c, s // 4), stage(2 * c, s // 2), stage(c, s)])
        self.stem = conv(3, c, 3)
        self.down1 = conv(c, 2 * c, 3, stride=2)
        self.down2 = conv(2 * c, 4 * c, 3, stride=2)
        self.up2 = nn.Sequential(nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), nn.ReLU(inplace=True))
        self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU(inplace=True))
        self.merge2 = conv(4 * c, 2 * c, 1)
        self.merge1 = conv(2 * c, c, 1)
        self.scm2, self.scm4 = ShallowConvModule(2 * c), ShallowConvModule(4 * c)
        self.fam2, self.fam4 = FeatureAttention(2 * c), FeatureAttention(4 * c)
        self.aff1, self.aff2 = AsymmetricFusion(7 * c, c), AsymmetricFusion(7 * c, 2 * c)
        self.out4 = conv(4 * c, 3, 3, relu=False)
        self.out2 = conv(2 * c, 3, 3, relu=False)
        self.out1 = conv(c, 3, 3, relu=False)

    def set_fft_mode(self, mode: str):
        if mode not in FFT_MODES:
            raise EdgekitError(f"unknown fft_mode {mode!r}; valid: {', '.join(FFT_MODES)}")
        for module in self.modules():
            if isinstance(module, ResFFTBlock):
                module.fft_mode = mode
        return self

    def prepare_for_export(self, image=None):
        """Export uses the matmul DFT (see module docstring), sized for `image`."""
        if image is not None:
            h, w = image.shape[-2:]
            if h % 4 or w % 4:
                raise EdgekitError(f"deblur input height and width must be multiples of 4, "
                                   f"got image shape {tuple(image.shape)}")
            for level, stages in ((0, (self.encoders[0], self.decoders[2])),
                                  (1, (self.encoders[1], self.decoders[1])),
                                  (2, (self.encoders[2], self.decoders[0]))):
                for stage in stages:
                    for block in stage:
                        block.set_window(h >> level, w >> level)
        return self.set_fft_mode("matmul")

    def forward_multiscale(self, image):
        """Restored images at 1/4, 1/2 and full resolution (the MIMO outputs)."""
        image2 = F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False)
        image4 = F.interpolate(image2, scale_factor=0.5, mode="bilinear", align_corners=False)
        e1 = self.encoders[0](self.stem(image))
        e2 = self.encoders[1](self.fam2(self.down1(e1), self.scm2(image2)))
        e3 = self.encoders[2](self.fam4(self.down2(e2), self.scm4(image4)))

        def resize(x, ref):
            return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)

        skip1 = self.aff1(e1, resize(e2, e1), resize(e3, e1))
        skip2 = self.aff2(resize(e1, e2), e2, resize(e3, e2))
        d3 = self.decoders[0](e3)
        out4 = image4 + self.out4(d3)
        d2 = self.decoders[1](self.merge2(torch.cat([self.up2(d3), skip2], dim=1)))
        out2 = image2 + self.out2(d2)
        d1 = self.decoders[2](self.merge1(torch.cat([self.up1(d2), skip1], dim=1)))
        return out4, out2, image + self.out1(d1)

    def forward(self, image):
        return self.forward_multiscale(image)[-1]


CONFIGS = {
    "tiny": DeblurConfig(),
    # DeepRFT (Mao et al.): base width 32, 8 blocks per stage, 256x256 training windows.
    "deeprft": DeblurConfig(base=32, blocks=8, window=256),
}


def _inputs(cfg: DeblurConfig):
    return [InputSpec("image", (1, 3, cfg.window, cfg.window), "float32")]


ENTRY = register(ZooEntry(
    name="deblur", task="deblur", configs=CONFIGS, factory=DeblurNet, inputs=_inputs,
    outputs=lambda cfg: list(DeblurNet.output_names),
    description="DeepRFT-style MIMO-UNet with Res FFT-ReLU blocks"))
