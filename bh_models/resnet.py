"""BH-ResNet: the bottom-heavy ResNet of Ning et al. (VISAPP 2023) on timm's ``ResNet``.

Compared with ResNet50 the stem is a 3x3 stride-1 convolution (then BN, ReLU and the 3x3 stride-2 max-pool),
the first stage also starts with stride 2 (on the bottleneck's 3x3 conv and the 1x1 projection shortcut), and
blocks move to the high-resolution stages: Bottleneck x (7, 6, 2, 1) instead of (3, 4, 6, 3). Output strides
stay 4/8/16/32 with 256/512/1024/2048 channels, and parameter names stay torchvision's/MMDetection's
(``conv1``, ``bn1``, ``layerN.i.convK``, ``layerN.i.downsample.0``), so the authors' backbone state dict
(``backbone.*`` of their MMDetection checkpoint, prefix removed) loads with no renaming.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from .builder import bh_pretrained_cfg, build_bh_model, register_bh_model
from .freezing import FreezableStagesMixin
from .layers import CheckpointedStemMixin, GuardedConv2d
from .weights import with_card_tags

__all__ = ['BHResNet', 'BH_RESNET_ARCHS']

# One line per variant: the arguments that make a timm ResNet bottom-heavy.
BH_RESNET_ARCHS: dict[str, dict[str, Any]] = {
    'bh_resnet50': dict(block=Bottleneck, layers=(7, 6, 2, 1), stem_kernel_size=3, stem_stride=1, first_stage_stride=2),
}

_UNSUPPORTED = ('stem_type', 'replace_stem_pool', 'aa_layer', 'avg_down')


class BHResNet(CheckpointedStemMixin, FreezableStagesMixin, ResNet):
    """timm ``ResNet`` with a bottom-heavy stem and a strided first stage.

    Args:
        block: Residual block class (``Bottleneck``).
        layers: Blocks per stage.
        stem_kernel_size: Kernel of the single stem convolution.
        stem_stride: Stride of the stem convolution (the max-pool after it adds 2).
        first_stage_stride: Stride of the first block of ``layer1``.
        frozen_stages: MMDetection's knob: -1 none, 0 the stem, k the stem and stages 1..k.
        norm_eval: Keep every BatchNorm in eval mode during training (MMDetection's knob).
        **kwargs: timm ``ResNet`` arguments (``num_classes``, ``in_chans``, ``global_pool``,
            ``output_stride``, ``drop_rate``, ``drop_path_rate``, ``norm_layer``, ...).
    """

    stage_names = (('conv1', 'bn1'), ('layer1',), ('layer2',), ('layer3',), ('layer4',))

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, ...],
        stem_kernel_size: int = 3,
        stem_stride: int = 1,
        first_stage_stride: int = 2,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        **kwargs: Any,
    ) -> None:
        given = [k for k in _UNSUPPORTED if kwargs.get(k)]
        if given:
            raise ValueError(f'BHResNet fixes its stem and shortcuts; these ResNet options are not supported: {given}')
        if block is not Bottleneck:
            raise ValueError(f'BHResNet is defined for Bottleneck blocks, got {block.__name__}.')
        if stem_stride * 2 * first_stage_stride != 4:
            raise ValueError('stem_stride * 2 (max-pool) * first_stage_stride must be 4, the stride of layer1.')
        super().__init__(block, layers, **kwargs)
        dd = dict(device=self.bn1.weight.device, dtype=self.bn1.weight.dtype)
        inplanes = self.bn1.num_features
        self.conv1 = GuardedConv2d(
            kwargs.get('in_chans', 3),
            inplanes,
            stem_kernel_size,
            stride=stem_stride,
            padding=stem_kernel_size // 2,
            bias=False,
            min_input_size=self.feature_info[-1]['reduction'],
            **dd,
        )
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        first = self.layer1[0]
        first.conv2.stride = (first_stage_stride, first_stage_stride)
        first.downsample[0].stride = (first_stage_stride, first_stage_stride)
        # the stem's own output is at full resolution; the first tap is after the max-pool, at stride 2
        self.feature_info[0] = dict(num_chs=inplanes, reduction=2 * stem_stride, module='maxpool')
        self._init_freezing(frozen_stages, norm_eval)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem up to feature level 0: full-resolution conv, BN, activation, max-pool (stride 2)."""
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``forward_features``; with gradient checkpointing the stem is recomputed too."""
        x = self.stem_maybe_checkpointed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``, with level 0 taken after the stem max-pool (stride 2).

        Args:
            x: Input images, NCHW.
            indices: Last n levels if int, all if None, else the levels to take (negative from the end).
            norm: Unused (ResNets have no final norm); kept for timm's signature.
            stop_early: Stop after the last requested level.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the list of intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.stem_maybe_checkpointed(x)
        intermediates = [x] if 0 in take_indices else []
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        if stop_early:
            stages = stages[:max_index]
        for feat_idx, stage in enumerate(stages, start=1):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """timm's pruning, except that the max-pool stays: level 0 is taken after it."""
        maxpool = self.maxpool
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        self.maxpool = maxpool
        return take_indices


default_cfgs = generate_default_cfgs(with_card_tags({name: bh_pretrained_cfg('fc') for name in BH_RESNET_ARCHS}))


def _create_bh_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> BHResNet:
    return build_bh_model(BHResNet, variant, pretrained, **BH_RESNET_ARCHS[variant], **kwargs)


@register_bh_model
def bh_resnet50(pretrained: bool = False, **kwargs: Any) -> BHResNet:
    """BH-ResNet50 (Table 4): 3x3/1 stem, Bottleneck x (7, 6, 2, 1), 10.91 M conv weights, 27.12 GFLOPs at 640x512."""
    return _create_bh_resnet('bh_resnet50', pretrained, **kwargs)
