"""Small torch models exported to ONNX for the quantization tests (no checkpoints needed)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class TinyCNN(nn.Module):
    """Covers conv+BN+ReLU6, depthwise, residual add, concat, pools, conv-transpose, gemm."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU())
        self.pw = nn.Conv2d(16, 16, 1)
        self.c2, self.c3 = nn.Conv2d(16, 8, 3, 1, 1), nn.Conv2d(16, 8, 1)
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.pool, self.avg = nn.MaxPool2d(2), nn.AvgPool2d(3, 1, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        a = self.c1(x)
        b = self.pw(self.dw(a)) + a
        c = torch.cat([self.c2(b), self.c3(b)], 1)
        d = self.avg(self.pool(torch.relu(c)))
        return self.fc(d.mean((2, 3))), self.up(d)


class TinyBlock(nn.Module):
    """A pre-norm transformer block (LayerNorm, attention, GELU MLP, residuals)."""

    def __init__(self, dim=16):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.att = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.fc1, self.fc2, self.act = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.GELU()

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.att(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class OutlierBlock(nn.Module):
    """A post-norm MLP block whose residual stream has one huge channel on marker tokens (BERT's
    [CLS] / [SEP] outliers): fc2's channel 3 reaches ~600 where the input's channel 0 is above 4
    (`outlier_feeds` marks token 0), every other value stays within a few units. The fc2 output and
    the residual sum are read only by the Add and the LayerNorm."""

    def __init__(self, dim=16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, 8)
        with torch.no_grad():
            self.fc1.weight[0] = 0
            self.fc1.weight[0, 0], self.fc1.bias[0] = 5.0, -20.0   # active only on marker tokens
            self.fc2.weight[:, 0] = 0
            self.fc2.weight[3, 0] = 30.0

    def forward(self, x):
        return self.head(self.ln(x + self.fc2(torch.relu(self.fc1(x)))))


def outlier_feeds(count, tokens=12, dim=16, seed=0):
    """OutlierBlock inputs: standard normal, token 0 marked by channel 0 = 8."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.standard_normal((1, tokens, dim)).astype(np.float32)
        x[0, 0, 0] = 8.0
        x[0, 1:, 0] = np.minimum(x[0, 1:, 0], 3.0)
        out.append({"x": x})
    return out


def export(model: nn.Module, shape, path, seed=0) -> str:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), str(path), input_names=["x"], dynamo=False,
                          opset_version=18)
    return str(path)


def feeds(shape, count, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]
