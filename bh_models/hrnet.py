"""BH-HRNet: the bottom-heavy HRNet of Ning et al. (VISAPP 2023) on timm's ``HighResolutionNet``.

Compared with HRNet the stem keeps its full resolution one layer longer: conv 3x3/1 (64) + BN + ReLU, conv 3x3/2
(64) + BN + ReLU, then a 3x3/2 max-pool, so ``layer1`` still runs at stride 4; and blocks move from the
low-resolution branches to the high-resolution ones (per-branch block counts non-increasing from the highest-
to the lowest-resolution branch). Everything else is timm's: the config dict style of ``timm.models.hrnet.cfg_cls``,
``HighResolutionModule`` (branches and fuse layers), transitions, the classification head and its ``incre``
feature modules, and the parameter names (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``, ``transition1``,
``stage2``, ...).

Feature levels are timm's ``hrnet_w*`` levels: level 0 is the stem at stride 2 with 64 channels, taken after
``conv2``/``bn2``/``act2`` and before the max-pool (the BH stem's stride-1 ``conv1`` output is not a level), levels
1-4 the four branches at strides 4-32 (``feature_location='incre'``: after the head's channel-increasing
Bottlenecks, 128/256/512/1024 channels; ``feature_location=''``: the raw branch outputs).

The paper prints only the deepest branch of stages 2-4, so the full layouts below are a reconstruction: see
``bh_models.design`` (``bh-models design hrnet``) for the rule, the search and the ranked candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import generate_default_cfgs
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import FeatureInfo, feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq
from timm.models.hrnet import HighResolutionNet
from torch import nn

from .builder import bh_pretrained_cfg, build_bh_model, register_bh_model
from .features import check_out_indices
from .freezing import FreezableStagesMixin
from .layers import CheckpointedStemMixin, GuardedConv2d
from .weights import with_card_tags

__all__ = ['BHHighResolutionNet', 'BHHighResolutionNetFeatures', 'BH_HRNET_CFGS', 'bh_hrnet_cfg']

StageLayout = tuple[int, tuple[int, ...]]  # (num_modules, blocks per branch, highest resolution first)


def bh_hrnet_cfg(width: int, layer1: int, stage2: StageLayout, stage3: StageLayout, stage4: StageLayout) -> dict:
    """A timm ``cfg_cls``-style HRNet config from a compact layout.

    Args:
        width: Channels of the highest-resolution branch (18, 32, ...); branch ``i`` has ``width * 2**i``.
        layer1: Bottleneck blocks of stage 1 (64 -> 256 channels at stride 4).
        stage2: ``(num_modules, num_blocks)`` of stage 2, ``num_blocks`` one per branch (2 branches).
        stage3: Same for stage 3 (3 branches).
        stage4: Same for stage 4 (4 branches).
    """
    widths = tuple(width * 2**i for i in range(4))

    def stage(num_branches: int, layout: StageLayout) -> dict:
        num_modules, num_blocks = layout
        if len(num_blocks) != num_branches:
            raise ValueError(f'stage with {num_branches} branches needs {num_branches} block counts, got {num_blocks}')
        return dict(
            num_modules=num_modules,
            num_branches=num_branches,
            block_type='BASIC',
            num_blocks=tuple(num_blocks),
            num_channels=widths[:num_branches],
            fuse_method='SUM',
        )

    return dict(
        stem_width=64,
        stage1=dict(
            num_modules=1,
            num_branches=1,
            block_type='BOTTLENECK',
            num_blocks=(layer1,),
            num_channels=(64,),
            fuse_method='SUM',
        ),
        stage2=stage(2, stage2),
        stage3=stage(3, stage3),
        stage4=stage(4, stage4),
    )


# One line per variant: (num_modules, blocks per branch) of stages 2-4, highest resolution first. The BH stem and the
# widths are the paper's, and so is the deepest branch: num_modules x its blocks = Table 4's x4, x12, x6 (w18) and
# x4, x8, x3 (w32). The rest is reconstructed by `bh-models design hrnet` (bh_models/design.py states the rule: blocks
# non-increasing towards low resolution, module counts closest to HRNet's (1, 4, 3), then the smallest error):
#   bh_hrnet_w18:  5.8615 M params (paper  5.85, +0.20 %), 21.676 GFLOPs at 640x512 (paper 21.66, +0.08 %)
#   bh_hrnet_w32: 12.3769 M params (paper 12.36, +0.14 %), 51.896 GFLOPs at 640x512 (paper 51.89, +0.01 %)
BH_HRNET_CFGS: dict[str, dict[str, Any]] = {
    'bh_hrnet_w18': bh_hrnet_cfg(18, layer1=4, stage2=(1, (4, 4)), stage3=(4, (5, 4, 3)), stage4=(1, (8, 7, 7, 6))),
    'bh_hrnet_w32': bh_hrnet_cfg(32, layer1=11, stage2=(1, (5, 4)), stage3=(4, (6, 2, 2)), stage4=(1, (8, 8, 5, 3))),
}

_MIN_INPUT_SIZE = 32  # total stride


def next_branches(transition: nn.ModuleList, yl: list[torch.Tensor]) -> list[torch.Tensor]:
    """The inputs of the next stage from a transition and the previous stage's outputs."""
    # timm's rule: a kept branch passes through, a new (or re-projected) one comes from the lowest-resolution output
    return [yl[i] if isinstance(t, nn.Identity) else t(yl[-1]) for i, t in enumerate(transition)]


def _checkpoint_stage(stage: nn.Module, xl: list[torch.Tensor]) -> list[torch.Tensor]:
    # HighResolutionModule writes into its input list: hand every (re)computation a fresh list
    for module in stage:
        xl = checkpoint(lambda *xs, m=module: m(list(xs)), *xl)
    return list(xl)


class BHHighResolutionNet(CheckpointedStemMixin, FreezableStagesMixin, HighResolutionNet):
    """timm ``HighResolutionNet`` with the bottom-heavy stem (3x3/1 conv, 3x3/2 conv, 3x3/2 max-pool).

    Args:
        cfg: A timm ``cfg_cls``-style config (see ``bh_hrnet_cfg``).
        in_chans: Input channels.
        frozen_stages: MMDetection's knob: -1 none, 0 the stem (``conv1``, ``bn1``, ``conv2``, ``bn2``), 1 also
            ``layer1``, k in 2..4 also ``transition{k-1}`` and ``stage{k}``.
        norm_eval: Keep every BatchNorm in eval mode during training (MMDetection's knob).
        **kwargs: timm ``HighResolutionNet`` arguments (``num_classes``, ``global_pool``, ``drop_rate``, ``head``,
            config overrides such as ``stage3=dict(...)``).
    """

    stage_names = (
        ('conv1', 'bn1', 'conv2', 'bn2'),
        ('layer1',),
        ('transition1', 'stage2'),
        ('transition2', 'stage3'),
        ('transition3', 'stage4'),
    )

    def __init__(
        self,
        cfg: dict,
        in_chans: int = 3,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(cfg, in_chans=in_chans, **kwargs)
        dd = dict(device=self.bn1.weight.device, dtype=self.bn1.weight.dtype)
        self.grad_checkpointing = False
        self.conv1 = GuardedConv2d(
            in_chans, self.bn1.num_features, 3, stride=1, padding=1, bias=False, min_input_size=_MIN_INPUT_SIZE, **dd
        )
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        order = [name for name in self._modules if name != 'maxpool']
        order.insert(order.index('act2') + 1, 'maxpool')
        self._modules = {name: self._modules[name] for name in order}  # print/trace order = execution order
        # timm's level 0 (64 ch, stride 2, 'stem'): here the output of conv2/bn2/act2, before the max-pool
        self.feature_info[0] = dict(num_chs=self.bn2.num_features, reduction=2, module='stem')
        self._init_freezing(frozen_stages, norm_eval)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute ``layer1`` blocks and each HRNet module in the backward pass (timm's HRNet has no such switch)."""
        self.grad_checkpointing = enable

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stem up to feature level 0 (stride 2, 64 channels); the max-pool starts ``stages``."""
        if not torch.jit.is_scripting():
            self._check_input_size(x)
        x = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(x)))

    @torch.jit.unused
    def _check_input_size(self, x: torch.Tensor) -> None:
        # the fuse layers up-sample by exact powers of two: the stride-4 map must be a multiple of 8 on each side
        if isinstance(x, torch.fx.Proxy) or x.dim() != 4 or isinstance(self.layer1, nn.Identity):
            return
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if min(height, width) >= _MIN_INPUT_SIZE and (-(-height // 4) % 8 or -(-width // 4) % 8):
            raise ValueError(
                f'input {height}x{width} (HxW) does not split into the HRNet branches: the fuse layers up-sample '
                f'the stride-8/16/32 maps by exact powers of two, so ceil(H/4) and ceil(W/4) must be multiples of 8. '
                f'Use multiples of {_MIN_INPUT_SIZE} (pad or resize the image).'
            )

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Max-pool, ``layer1`` and stages 2-4 (timm's ``stages`` after the BH max-pool): the four branch outputs."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._stages_checkpointed(x)
        x = self.layer1(self.maxpool(x))
        xl: list[torch.Tensor] = []
        for t in self.transition1:
            xl.append(t(x))
        for module in self.stage2:
            xl = module(xl)
        yl = xl
        xl = []
        for i, t in enumerate(self.transition2):
            xl.append(yl[i] if isinstance(t, nn.Identity) else t(yl[-1]))
        for module in self.stage3:
            xl = module(xl)
        yl = xl
        xl = []
        for i, t in enumerate(self.transition3):
            xl.append(yl[i] if isinstance(t, nn.Identity) else t(yl[-1]))
        for module in self.stage4:
            xl = module(xl)
        return xl

    @torch.jit.unused
    def _stages_checkpointed(self, x: torch.Tensor) -> list[torch.Tensor]:
        yl = [checkpoint_seq(self.layer1, self.maxpool(x))]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            yl = _checkpoint_stage(stage, next_branches(transition, yl))
        return yl

    def forward_features(self, x: torch.Tensor):
        """timm's ``forward_features`` with the BH stem: the head's 2048-channel map, or the branch list without it."""
        x = self.stem_maybe_checkpointed(x)
        if isinstance(self.layer1, nn.Identity):
            return x  # only the stem remains (prune_intermediate_layers)
        yl = self.stages(x)
        if self.incre_modules is None or self.downsamp_modules is None:
            return yl
        feats: list[torch.Tensor] = []
        for i, incre in enumerate(self.incre_modules):
            feats.append(incre(yl[i]))
        y = feats[0]
        for i, down in enumerate(self.downsamp_modules):
            y = feats[i + 1] + down(y)
        return self.final_layer(y)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[Any, list[torch.Tensor]]:
        """timm's ``forward_intermediates`` for HRNet, level 0 taken after ``act2`` (stride 2, before the max-pool).

        Args:
            x: Input images, NCHW.
            indices: Last n levels if int, all if None, else the levels to take (negative from the end). Levels 1-4
                are the branch outputs passed through the head's ``incre`` modules when the model has them.
            norm: Unused (no final norm); kept for timm's signature.
            stop_early: Stop after the last requested level.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the list of intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(self.num_branches + 1, indices)
        intermediates = []
        x = self.stem_maybe_checkpointed(x)
        if 0 in take_indices:
            intermediates.append(x)
        if max_index == 0 and (stop_early or isinstance(self.layer1, nn.Identity)):
            return intermediates if intermediates_only else (x, intermediates)
        yl = self.stages(x)
        if self.incre_modules is None:
            intermediates.extend(y for i, y in enumerate(yl, start=1) if i in take_indices)
            return intermediates if intermediates_only else (yl, intermediates)
        incre_modules = self.incre_modules[:max_index] if stop_early else self.incre_modules
        aggregate = not intermediates_only and self.downsamp_modules is not None
        y = None
        for i, incre in enumerate(incre_modules):
            x = incre(yl[i])
            if i + 1 in take_indices:
                intermediates.append(x)
            if aggregate:
                y = x if y is None else x + self.downsamp_modules[i - 1](y)
        if intermediates_only:
            return intermediates
        if aggregate and len(incre_modules) == len(self.downsamp_modules) + 1:
            return self.final_layer(y), intermediates
        return yl, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """timm's pruning; when only the stem is kept, ``conv2``/``bn2``/``act2`` stay (level 0 is after them)."""
        stem = {name: getattr(self, name) for name in ('conv2', 'bn2', 'act2')}
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if isinstance(self.layer1, nn.Identity):
            for name, module in stem.items():
                setattr(self, name, module)
            self.maxpool = nn.Identity()
        return take_indices


class BHHighResolutionNetFeatures(BHHighResolutionNet):
    """BH version of timm's ``HighResolutionNetFeatures`` (what ``features_only=True`` builds).

    Args:
        cfg: A timm ``cfg_cls``-style config.
        in_chans: Input channels.
        feature_location: ``'incre'`` (default, timm's): levels 1-4 after the head's channel-increasing blocks
            (128/256/512/1024 channels); ``''``: the raw branch outputs (``width * (1, 2, 4, 8)`` channels).
        out_indices: Levels to return (0 = stem at stride 2, 1-4 = branches at strides 4-32); an int n means the
            last n; negative indices count from the end.
        frozen_stages: As for ``BHHighResolutionNet``.
        norm_eval: As for ``BHHighResolutionNet``.
        **kwargs: Other ``HighResolutionNet`` arguments.
    """

    def __init__(
        self,
        cfg: dict,
        in_chans: int = 3,
        num_classes: int = 1000,
        output_stride: int = 32,
        global_pool: str = 'avg',
        drop_rate: float = 0.0,
        feature_location: str = 'incre',
        out_indices: int | Sequence[int] = (0, 1, 2, 3, 4),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        **kwargs: Any,
    ) -> None:
        if feature_location not in ('incre', ''):
            raise ValueError(
                f"feature_location must be 'incre' (branch outputs through the head's channel-increasing blocks) "
                f"or '' (raw branch outputs), got {feature_location!r}"
            )
        super().__init__(
            cfg,
            in_chans=in_chans,
            num_classes=num_classes,
            output_stride=output_stride,
            global_pool=global_pool,
            drop_rate=drop_rate,
            head=feature_location,
            frozen_stages=frozen_stages,
            norm_eval=norm_eval,
            **kwargs,
        )
        name = f'BH-HRNet-W{cfg["stage2"]["num_channels"][0]} (feature_location={feature_location!r})'
        out_indices = check_out_indices(out_indices, self.feature_info, name)
        self.feature_info = FeatureInfo(self.feature_info, out_indices)
        self._out_idx = out_indices

    def forward_features(self, x: torch.Tensor):
        """Not available on the features model (as in timm): call the model itself."""
        raise RuntimeError('the features_only model returns its feature list from forward(); call model(x)')

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The requested feature levels, highest resolution first."""
        out: list[torch.Tensor] = []
        x = self.stem_maybe_checkpointed(x)
        if 0 in self._out_idx:
            out.append(x)
        yl = self.stages(x)
        if self.incre_modules is not None:
            feats: list[torch.Tensor] = []
            for i, incre in enumerate(self.incre_modules):
                feats.append(incre(yl[i]))
            yl = feats
        for i, f in enumerate(yl):
            if i + 1 in self._out_idx:
                out.append(f)
        return out


default_cfgs = generate_default_cfgs(with_card_tags({name: bh_pretrained_cfg('classifier') for name in BH_HRNET_CFGS}))


def _feature_cls_from(kwargs: dict[str, Any]) -> Any:
    """``feature_cls`` given directly or in ``feature_cfg`` (timm's generic feature wrappers), else None."""
    feature_cfg = dict(kwargs.pop('feature_cfg', None) or {})
    feature_cls = kwargs.pop('feature_cls', feature_cfg.pop('feature_cls', None))
    if feature_cfg:
        raise ValueError(f'feature_cfg may only name feature_cls for BH-HRNets, got extra keys {sorted(feature_cfg)}')
    return feature_cls


def _create_bh_hrnet(variant: str, pretrained: bool = False, **kwargs: Any) -> BHHighResolutionNet:
    """timm's ``_create_hrnet`` through ``build_bh_model``: ``features_only`` builds the features class."""
    feature_cls = _feature_cls_from(kwargs)
    features_only = kwargs.pop('features_only', False)
    extra: dict[str, Any] = {}
    model_cls = BHHighResolutionNet
    if features_only and feature_cls is not None:
        # a generic timm wrapper ('getter' uses forward_intermediates) around the classification model
        extra = dict(features_only=True, feature_cls=feature_cls)
    elif features_only:
        model_cls = BHHighResolutionNetFeatures
        extra = dict(kwargs_filter=('num_classes', 'global_pool'))
    strict_default = model_cls is BHHighResolutionNet and kwargs.get('head', 'classification') == 'classification'
    pretrained_strict = kwargs.pop('pretrained_strict', strict_default)
    model = build_bh_model(
        model_cls,
        variant,
        pretrained,
        model_cfg=BH_HRNET_CFGS[variant],
        pretrained_strict=pretrained_strict,
        **extra,
        **kwargs,
    )
    if model_cls is BHHighResolutionNetFeatures:
        model.pretrained_cfg = pretrained_cfg_for_features(model.default_cfg)
        model.default_cfg = model.pretrained_cfg
    return model


@register_bh_model
def bh_hrnet_w18(pretrained: bool = False, **kwargs: Any) -> BHHighResolutionNet:
    """BH-HRNet18 (Table 4): BH stem, widths 18/36/72/144; 5.85 M params, 21.66 GFLOPs at 640x512 (reconstructed)."""
    return _create_bh_hrnet('bh_hrnet_w18', pretrained, **kwargs)


@register_bh_model
def bh_hrnet_w32(pretrained: bool = False, **kwargs: Any) -> BHHighResolutionNet:
    """BH-HRNet32 (Table 4): BH stem, widths 32/64/128/256; 12.36 M params, 51.89 GFLOPs at 640x512 (reconstructed)."""
    return _create_bh_hrnet('bh_hrnet_w32', pretrained, **kwargs)
