"""BH backbones (and timm baselines) in detectors: torchvision FPN backbones and tiny-object defaults.

``torchvision_backbone('bh_resnet50')`` returns a module with ``.out_channels`` whose forward gives an OrderedDict of
FPN levels, which is what torchvision's ``FasterRCNN``, ``RetinaNet``, ``FCOS`` and ``MaskRCNN`` take as backbone. It is
timm's ``features_only`` model under torchvision's own ``FeaturePyramidNetwork`` (and ``LastLevelMaxPool`` /
``LastLevelP6P7`` extra blocks), with torchvision's knobs: ``returned_layers``, ``trainable_stages`` (torchvision's
``trainable_layers``), the backbone ``norm_layer`` (``FrozenBatchNorm2d`` or ``BatchNorm2d``) and ``extra_blocks``.

Tiny-object defaults (TinyPerson protocol of the paper: 640x512 patches, objects of 2-32 px) mirror the authors'
``faster_rcnn_bh50_sspnet`` config: anchors of ``(1.5, 2.5, 3.7, 8) x stride`` at strides 4-64 with height/width
ratios ``(0.4, 0.8, 1.4)`` (``tiny_anchor_generator``), images kept at their 640x512 size (``tiny_faster_rcnn``).

MMDetection 3.x uses the models through mmpretrain's ``TIMMBackbone`` (see ``configs/mmdet/``), detectron2 through
the snippet in the README; neither needs code here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from timm.models import FeatureDictNet, FeatureListNet
from timm.models._manipulate import group_with_matcher
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from .freezing import StageNames, apply_eval_policy, freeze_stages

__all__ = [
    'TINY_ANCHOR_SCALES',
    'TINY_ASPECT_RATIOS',
    'TINYPERSON_PATCH_SIZE',
    'TimmFPNBackbone',
    'stage_module_names',
    'tiny_anchor_generator',
    'tiny_faster_rcnn',
    'torchvision_backbone',
]

# The authors' faster_rcnn_bh50_sspnet anchors: MMDetection `scales` (anchor side = scale x stride) and `ratios` (h/w,
# torchvision's `aspect_ratios` convention too). At strides 4-64 the smallest anchors are 6, 12, 24, 48, 96 px.
TINY_ANCHOR_SCALES: tuple[float, ...] = (1.5, 2.5, 3.7, 8.0)
TINY_ASPECT_RATIOS: tuple[float, ...] = (0.4, 0.8, 1.4)
# TinyPerson training patches (width, height): images are cut into 640x512 patches with 30 px overlap (paper, Sec. 4).
TINYPERSON_PATCH_SIZE: tuple[int, int] = (640, 512)


def _coarse_groups(body: nn.Module, num_stages: int) -> list[list[str]] | None:
    """Top-level modules grouped by the model's own timm ``group_matcher(coarse=True)`` (stem first)."""
    matcher = getattr(body, 'group_matcher', None)
    if matcher is None:
        return None
    grouped = group_with_matcher(body.named_children(), matcher(coarse=True))
    groups = [names for _, names in sorted(grouped.items())]
    if len(groups) == num_stages + 1:
        groups = groups[:-1]  # the last ordinal collects the unmatched modules (head, incre, activations)
    return groups if len(groups) == num_stages else None


def _tap_groups(body: nn.Module, num_stages: int) -> list[list[str]] | None:
    """Top-level modules of a timm ``FeatureListNet``/``FeatureDictNet``, cut after each feature level's module."""
    if not isinstance(body, (FeatureListNet, FeatureDictNet)):
        return None
    taps = [info['module'].replace('.', '_') for info in body.feature_info.info]
    groups: list[list[str]] = [[] for _ in taps]
    stage = 0
    for name, _ in body.named_children():  # the wrapper holds the model's modules up to the last requested level
        if stage == len(taps):
            return None
        groups[stage].append(name)
        if name == taps[stage]:
            stage += 1
    return groups if len(groups) == num_stages else None


def stage_module_names(body: nn.Module, name: str = 'this model') -> StageNames:
    """The top-level module names of each stage of a timm ``features_only`` model, stem (stage 0) first.

    BH models declare theirs (``stage_names``); for timm models they come from the model's coarse ``group_matcher``
    (HRNet: the stem, then ``layer1``/``transition1``, ``stage2``/``transition2``, ...) or, for the generic
    ``FeatureListNet`` (ResNet), from the module each feature level is taken after.

    Raises:
        ValueError: the model has no stage structure this function can read.
    """
    num_stages = len(body.feature_info.info)
    names = getattr(body, 'stage_names', None)
    groups = [list(n) for n in names] if names else _coarse_groups(body, num_stages) or _tap_groups(body, num_stages)
    if not groups:
        raise ValueError(
            f'cannot tell the stages of {name} ({type(body).__name__}) apart, so trainable_stages cannot freeze them; '
            f'leave trainable_stages=None (every stage trains) and call requires_grad_(False) on the modules of '
            f'backbone.body you want frozen.'
        )
    return tuple(tuple(g) for g in groups)


class TimmFPNBackbone(nn.Module):
    """A timm ``features_only`` model under torchvision's ``FeaturePyramidNetwork``: a torchvision detector backbone.

    The forward returns an OrderedDict ``{'0': P(first returned level), '1': ..., <extra block levels>}``, all with
    ``out_channels`` channels, as torchvision's ``BackboneWithFPN`` does; ``feature_names`` are the body's keys (what
    ``MultiScaleRoIAlign`` pools from) and ``strides`` the stride of every output level.

    Args:
        body: A timm ``features_only`` model (returns a list of NCHW maps described by its ``feature_info``).
        out_channels: FPN channels.
        extra_blocks: torchvision ``ExtraFPNBlock`` after the last level (``LastLevelMaxPool`` if None).
        stage_names: Top-level module names per stage (stem first), for ``frozen_stages``.
        frozen_stages: Stages 0..k get ``requires_grad=False`` and stay in eval mode; -1 freezes nothing.
        fpn_norm_layer: Normalisation inside the FPN (torchvision's ``norm_layer`` of ``FeaturePyramidNetwork``).
    """

    def __init__(
        self,
        body: nn.Module,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        stage_names: StageNames = (),
        frozen_stages: int = -1,
        fpn_norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=body.feature_info.channels(),
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
            norm_layer=fpn_norm_layer,
        )
        self.out_channels = out_channels
        self.feature_names = [str(i) for i in range(len(body.feature_info.channels()))]
        self.stage_names = stage_names
        self.frozen_stages = frozen_stages
        freeze_stages(self.body, stage_names, frozen_stages)
        self.train(self.training)

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of every output level, the extra block's included (what anchors are laid out on)."""
        strides = list(self.body.feature_info.reduction())
        extra = self.fpn.extra_blocks
        if isinstance(extra, LastLevelMaxPool):
            strides.append(strides[-1] * 2)
        elif isinstance(extra, LastLevelP6P7):
            strides += [strides[-1] * 2, strides[-1] * 4]
        elif extra is not None:
            raise ValueError(
                f'strides are known for LastLevelMaxPool and LastLevelP6P7 only, not {type(extra).__name__}; '
                f'pass the strides of your extra levels to tiny_anchor_generator(strides=...) yourself.'
            )
        return tuple(strides)

    def train(self, mode: bool = True) -> TimmFPNBackbone:
        """Set train/eval mode, keeping the frozen stages in eval mode (their BN statistics do not move)."""
        super().train(mode)
        apply_eval_policy(self.body, self.stage_names, self.frozen_stages, norm_eval=False)
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """FPN levels of a batch of images (NCHW), highest resolution first."""
        features = self.body(x)
        return self.fpn(OrderedDict(zip(self.feature_names, features, strict=True)))


def _check_norm_layer(norm_layer: Any) -> None:
    if norm_layer not in (FrozenBatchNorm2d, nn.BatchNorm2d):
        raise ValueError(
            f'norm_layer must be torchvision.ops.FrozenBatchNorm2d (fixed statistics and affine, for pretrained '
            f'weights) or torch.nn.BatchNorm2d (trainable), got {norm_layer!r}. For SyncBatchNorm build with '
            f'nn.BatchNorm2d and call nn.SyncBatchNorm.convert_sync_batchnorm(model).'
        )


def torchvision_backbone(
    name: str,
    pretrained: bool = False,
    out_channels: int = 256,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    trainable_stages: int | None = None,
    norm_layer: type[nn.Module] | None = None,
    extra_blocks: ExtraFPNBlock | None = None,
    **model_kwargs: Any,
) -> TimmFPNBackbone:
    """A timm model (``bh_*`` or a timm baseline such as ``resnet50``, ``hrnet_w18``) as a torchvision FPN backbone.

    The timm analogue of ``torchvision.models.detection.backbone_utils.resnet_fpn_backbone``; the result goes straight
    into ``FasterRCNN(backbone, num_classes=...)``, ``RetinaNet`` or ``FCOS``.

    Args:
        name: A timm model name (``import bh_models`` registers the ``bh_*`` ones), optionally with a pretrained tag.
        pretrained: Load the model's pretrained weights (timm's ``pretrained``).
        out_channels: FPN channels.
        returned_layers: Feature levels to feed the FPN, as ``feature_info`` indices: for the BH models, ResNets and
            HRNets 0 is stride 2 and 1-4 are strides 4-32 (torchvision's ``returned_layers``; add 0 for the
            stride-2 level, which then needs one more anchor size).
        trainable_stages: Stages left trainable counted from the deepest, as torchvision's ``trainable_layers``:
            0..5, 5 = all (stem included), 3 = freeze the stem and stage 1 (MMDetection's ``frozen_stages=1``).
            Frozen stages get ``requires_grad=False`` and stay in eval mode. None: 3 with ``pretrained``, else 5
            (randomly initialised stages must learn, as torchvision does); all trainable for a model whose stages
            ``stage_module_names`` cannot read.
        norm_layer: The backbone's BatchNorm: ``torchvision.ops.FrozenBatchNorm2d`` (statistics and affine fixed:
            torchvision's choice for pretrained backbones) or ``nn.BatchNorm2d``. None: frozen with ``pretrained``,
            else BatchNorm2d (frozen BN of an untrained model would normalise nothing).
        extra_blocks: torchvision ``ExtraFPNBlock`` on top (None: ``LastLevelMaxPool``, a stride-64 ``'pool'``
            level; ``LastLevelP6P7(256, 256)`` for RetinaNet/FCOS).
        **model_kwargs: Passed to ``timm.create_model`` (``in_chans``, ``drop_path_rate``, ``feature_location``,
            ``pretrained_cfg_overlay=dict(file=...)``, ...).

    Returns:
        A ``TimmFPNBackbone`` with ``out_channels``, ``feature_names``, ``strides`` and the timm model as ``body``.
    """
    for key in ('features_only', 'out_indices'):
        if key in model_kwargs:
            raise ValueError(
                f'torchvision_backbone builds the features_only model itself: drop {key}= and use '
                f'returned_layers=(...) to pick the levels.'
            )
    if 'frozen_stages' in model_kwargs:
        raise ValueError(
            'pass trainable_stages (torchvision counting: 5 - trainable = frozen stem and stages) '
            'instead of frozen_stages; torchvision_backbone freezes every timm model the same way.'
        )
    if isinstance(returned_layers, int) or not returned_layers:
        raise ValueError(
            f'returned_layers must be a non-empty sequence of feature levels such as (1, 2, 3, 4), '
            f'got {returned_layers!r}'
        )
    if norm_layer is None:
        norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    _check_norm_layer(norm_layer)
    body = timm.create_model(
        name, pretrained=pretrained, features_only=True, out_indices=tuple(returned_layers), **model_kwargs
    )
    if norm_layer is FrozenBatchNorm2d:
        body = freeze_batch_norm_2d(body)
    try:
        stage_names = stage_module_names(body, name)
    except ValueError:
        if trainable_stages is not None:
            raise
        stage_names = ()  # stages unknown: train all of them (what trainable_stages=None can always do)
    num_stages = len(stage_names)
    if trainable_stages is None:
        trainable_stages = min(3, num_stages) if pretrained else num_stages
    if isinstance(trainable_stages, bool) or not isinstance(trainable_stages, int):
        raise ValueError(f'trainable_stages must be an int in 0..{num_stages}, got {trainable_stages!r}')
    if not 0 <= trainable_stages <= num_stages:
        raise ValueError(
            f'trainable_stages={trainable_stages} is out of range for {name}: use 0..{num_stages} ({num_stages} = '
            f'all trainable, 0 = backbone frozen; stages, stem first: {[list(s) for s in stage_names]}).'
        )
    return TimmFPNBackbone(
        body,
        out_channels=out_channels,
        extra_blocks=extra_blocks,
        stage_names=stage_names,
        frozen_stages=num_stages - trainable_stages - 1,
    )


def tiny_anchor_generator(
    strides: Sequence[int] = (4, 8, 16, 32, 64),
    scales: Sequence[float] = TINY_ANCHOR_SCALES,
    aspect_ratios: Sequence[float] = TINY_ASPECT_RATIOS,
) -> AnchorGenerator:
    """torchvision ``AnchorGenerator`` for tiny objects: anchors of side ``scale x stride`` on every level.

    The defaults are the authors' TinyPerson anchors (MMDetection ``AnchorGenerator(scales=[1.5, 2.5, 3.7, 8],
    ratios=[0.4, 0.8, 1.4], strides=[4, 8, 16, 32, 64])``): 6-32 px anchors on the stride-4 level cover the 2-32 px
    objects. For FCOS (one point per location) use ``scales=(1.0,), aspect_ratios=(1.0,)``.

    Args:
        strides: Stride of each backbone output level (``TimmFPNBackbone.strides``).
        scales: Anchor side in units of the level's stride.
        aspect_ratios: Height / width ratios (torchvision's and MMDetection's convention).
    """
    sizes = tuple(tuple(float(scale * stride) for scale in scales) for stride in strides)
    return AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(float(r) for r in aspect_ratios),) * len(sizes))


def tiny_faster_rcnn(
    name: str,
    num_classes: int = 2,
    backbone_kwargs: dict[str, Any] | None = None,
    **detector_kwargs: Any,
) -> FasterRCNN:
    """torchvision ``FasterRCNN`` with a timm/BH FPN backbone and the tiny-object defaults of the paper's protocol.

    Defaults (each overridable through ``detector_kwargs``): ``tiny_anchor_generator`` on the backbone's strides;
    ``min_size=512, max_size=640`` so that 640x512 TinyPerson patches are not resized (torchvision's default 800/1333
    would scale them by 1.56); the model's own ``pretrained_cfg`` mean/std; RoI pooling on every returned level;
    up to 500 detections per image (the authors' ``max_per_img``).

    Args:
        name: timm model name (``bh_resnet50``, ``resnet50``, ...).
        num_classes: Classes including the background (2 for TinyPerson's single class).
        backbone_kwargs: Arguments of ``torchvision_backbone``.
        **detector_kwargs: Arguments of ``FasterRCNN``.
    """
    backbone = torchvision_backbone(name, **(backbone_kwargs or {}))
    cfg = backbone.body.pretrained_cfg
    defaults: dict[str, Any] = dict(
        rpn_anchor_generator=tiny_anchor_generator(backbone.strides),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=backbone.feature_names, output_size=7, sampling_ratio=2),
        min_size=TINYPERSON_PATCH_SIZE[1],
        max_size=TINYPERSON_PATCH_SIZE[0],
        image_mean=list(cfg.get('mean', (0.485, 0.456, 0.406))),
        image_std=list(cfg.get('std', (0.229, 0.224, 0.225))),
        box_detections_per_img=500,
    )
    return FasterRCNN(backbone, num_classes=num_classes, **{**defaults, **detector_kwargs})
