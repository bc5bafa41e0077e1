"""A user module for `edgekit export --module` tests (importable as tests.models.netfactory)."""
import torch
from torch import nn


class UserNet(nn.Module):
    """Conv->BN->ReLU6, and two transposed convs summed before a BN (the LitePose head pattern)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.up_a = nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False)
        self.up_b = nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False)
        self.bn_up = nn.BatchNorm2d(4)
        for bn in (self.bn, self.bn_up):  # non-trivial statistics, so a wrong fold shows
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        return torch.relu(self.bn_up(self.up_a(y) + self.up_b(y * 0.5)))


def make_net():
    torch.manual_seed(0)
    return UserNet().eval()


def not_a_module():
    return 42
