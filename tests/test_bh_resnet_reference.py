"""BH-ResNet50 equals an independent, straightforward implementation of the authors' network.

The reference below is written from the paper/NOTES and the authors' MMDetection ``BHResNet`` description
(3x3/1 stem conv + BN + ReLU, 3x3/2 max-pool, Bottleneck stages (7, 6, 2, 1) with strides (2, 2, 2, 2),
stride on the 3x3 conv, 1x1 conv + BN projection shortcut), in plain torch with torchvision/MMDetection
parameter names. It shares no code with bh_models.
"""

from __future__ import annotations

import timm
import torch
from torch import nn


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class RefBHResNet50(nn.Module):
    """The official BH-ResNet50 backbone, written out directly."""

    def __init__(self, depths=(7, 6, 2, 1), strides=(2, 2, 2, 2), widths=(64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (depth, stride, planes) in enumerate(zip(depths, strides, widths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(RefBottleneck(inplanes, planes, stride if j == 0 else 1))
                inplanes = planes * RefBottleneck.expansion
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = [x]
        for i in range(1, 5):
            x = getattr(self, f'layer{i}')(x)
            outs.append(x)
        return outs


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so that a mis-wired BN shows up."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def test_state_dict_keys_and_shapes_are_the_official_ones():
    ref = RefBHResNet50()
    ours = timm.create_model('bh_resnet50', num_classes=0)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd), 'parameter names or order differ from torchvision/MMDetection'
    assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)


def test_outputs_equal_reference_given_the_same_weights():
    ref = RefBHResNet50()
    _randomise_bn(ref)
    ref.eval()
    ours = timm.create_model('bh_resnet50', features_only=True)
    ours.load_state_dict(ref.state_dict(), strict=True)  # the official backbone state dict, no renaming
    ours.eval()
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_classifier_trunk_equals_reference():
    ref = RefBHResNet50()
    _randomise_bn(ref)
    ref.eval()
    ours = timm.create_model('bh_resnet50', num_classes=0, global_pool='')
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x)[-1], rtol=1e-5, atol=1e-5)
