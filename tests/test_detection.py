"""torchvision detectors on BH (and timm baseline) FPN backbones: train steps, eval, freezing, tiny-object defaults."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from bh_models.detection import (
    TINY_ANCHOR_SCALES,
    TimmFPNBackbone,
    tiny_anchor_generator,
    tiny_faster_rcnn,
    torchvision_backbone,
)

MODELS = timm.list_models('bh_*')
REPO = Path(__file__).resolve().parents[1]
HW = (512, 640)  # a TinyPerson training patch: 640 wide, 512 high
# small RPN/RoI samples keep a 640x512 training step at a few seconds on 2 CPU cores
SMALL_SAMPLES = dict(
    rpn_batch_size_per_image=32,
    box_batch_size_per_image=32,
    rpn_pre_nms_top_n_train=300,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100,
)


def _require(module: str):
    """Import an optional test dependency: skipped locally when missing, a failure in CI (which installs it)."""
    if os.environ.get('CI') == 'true':
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f'{module} missing: install the README Quick start test extras')


def _tiny_targets(n: int = 1) -> list[dict[str, torch.Tensor]]:
    """TinyPerson-sized boxes: 3x8, 6x14 and 12x20 px people, in (x1, y1, x2, y2)."""
    boxes = torch.tensor([[100.0, 100.0, 103.0, 108.0], [300.0, 200.0, 306.0, 214.0], [500.0, 400.0, 512.0, 420.0]])
    return [dict(boxes=boxes.clone(), labels=torch.ones(3, dtype=torch.int64)) for _ in range(n)]


def _stage_params(backbone: TimmFPNBackbone, stages: range) -> list[tuple[str, nn.Parameter]]:
    prefixes = tuple(f'{name}.' for s in stages for name in backbone.stage_names[s])
    return [(n, p) for n, p in backbone.body.named_parameters() if n.startswith(prefixes)]


@pytest.mark.parametrize('name', MODELS)
def test_faster_rcnn_train_step_and_eval_at_640x512(name):
    model = tiny_faster_rcnn(name, backbone_kwargs=dict(trainable_stages=3), **SMALL_SAMPLES)
    backbone = model.backbone
    assert backbone.frozen_stages == 1, 'trainable_stages=3 freezes the stem and stage 1 (torchvision counting)'
    frozen, trainable = _stage_params(backbone, range(0, 2)), _stage_params(backbone, range(2, 5))
    assert frozen and trainable
    assert not any(p.requires_grad for _, p in frozen) and all(p.requires_grad for _, p in trainable)
    frozen_bn = [
        m for n in backbone.stage_names[0] + backbone.stage_names[1] for m in getattr(backbone.body, n).modules()
    ]
    frozen_bn = [m for m in frozen_bn if isinstance(m, nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in frozen_bn]
    # running statistics = the training batch's (cumulative average), so that eval mode sees normalised features as a
    # trained model would: an untrained HRNet with initial statistics blows up to 1e7 and proposes nothing
    for m in backbone.body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None

    model.train()
    assert frozen_bn and not any(m.training for m in frozen_bn), 'frozen stages must stay in eval mode'
    losses = model([torch.rand(3, *HW)], _tiny_targets())
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(p.grad is None for _, p in frozen), 'a frozen stage got a gradient'
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f'trainable backbone parameters without gradient: {no_grad[:5]}'
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert all(p.grad is not None for p in backbone.fpn.parameters())
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, frozen_bn, strict=True))

    model.eval()
    model.roi_heads.score_thresh = 0.0  # an untrained head scores everything low: keep its detections
    with torch.no_grad():
        (detections,) = model([torch.rand(3, *HW)])
    boxes = detections['boxes']
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    assert detections['scores'].shape == detections['labels'].shape == (len(boxes),)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= HW[1]).all() and (boxes[:, 3] <= HW[0]).all()


def test_retinanet_and_fcos_build_and_step():
    # 320x256: their dense heads run four 256-channel 3x3 convolutions on the stride-4 level, 4x the cost at 640x512
    images, targets = [torch.rand(3, 256, 320)], [dict(t, boxes=t['boxes'] / 2) for t in _tiny_targets()]
    # RetinaNet: tiny anchors on P2-P5 plus torchvision's P6/P7 block
    backbone = torchvision_backbone('bh_resnet50', extra_blocks=LastLevelP6P7(256, 256))
    assert backbone.strides == (4, 8, 16, 32, 64, 128)
    retina = RetinaNet(
        backbone, num_classes=2, anchor_generator=tiny_anchor_generator(backbone.strides), min_size=256, max_size=320
    )
    losses = retina(images, targets)
    assert set(losses) == {'classification', 'bbox_regression'} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in backbone.body.parameters())
    # FCOS: one point per location, anchor side = stride
    backbone = torchvision_backbone('bh_resnet50', extra_blocks=LastLevelP6P7(256, 256))
    fcos = FCOS(
        backbone,
        num_classes=2,
        anchor_generator=tiny_anchor_generator(backbone.strides, scales=(1.0,), aspect_ratios=(1.0,)),
        min_size=256,
        max_size=320,
    )
    losses = fcos(images, targets)
    assert set(losses) == {'classification', 'bbox_regression', 'bbox_ctrness'}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in backbone.fpn.parameters())
    fcos.eval()
    with torch.no_grad():
        (detections,) = fcos(images)
    assert set(detections) == {'boxes', 'scores', 'labels'}


@pytest.mark.parametrize('name', ['resnet50', 'hrnet_w18'])
def test_timm_baselines_trainable_stages(name):
    """The same adapter and freezing for timm's own models, so that BH and standard backbones compare like for like."""
    backbone = torchvision_backbone(name, trainable_stages=2)
    assert len(backbone.stage_names) == 5 and backbone.frozen_stages == 2
    frozen, trainable = _stage_params(backbone, range(0, 3)), _stage_params(backbone, range(3, 5))
    assert frozen and trainable
    assert not any(p.requires_grad for _, p in frozen) and all(p.requires_grad for _, p in trainable)
    backbone.train()
    out = backbone(torch.randn(2, 3, 128, 160))
    assert list(out) == ['0', '1', '2', '3', 'pool']
    for feat, stride in zip(out.values(), backbone.strides, strict=True):
        assert feat.shape == (2, 256, -(-128 // stride), -(-160 // stride))
    sum(f.mean() for f in out.values()).backward()
    assert all(p.grad is None for _, p in frozen) and all(p.grad is not None for _, p in trainable)


def test_trainable_stages_counting_and_defaults():
    body_params = lambda b: [p for p in b.body.parameters()]  # noqa: E731
    assert all(p.requires_grad for p in body_params(torchvision_backbone('bh_resnet50')))  # untrained: all trainable
    assert not any(p.requires_grad for p in body_params(torchvision_backbone('bh_resnet50', trainable_stages=0)))
    one = torchvision_backbone('bh_resnet50', trainable_stages=1)
    assert [n for n, p in one.body.named_parameters() if p.requires_grad][0].startswith('layer4.')
    everything = torchvision_backbone('bh_resnet50', trainable_stages=5)
    assert everything.frozen_stages == -1 and all(m.training for m in everything.train().body.modules())


def test_frozen_batchnorm_is_the_eval_mode_network():
    torch.manual_seed(0)
    plain = torchvision_backbone('bh_hrnet_w18', norm_layer=nn.BatchNorm2d).eval()
    torch.manual_seed(0)
    frozen = torchvision_backbone('bh_hrnet_w18', norm_layer=FrozenBatchNorm2d).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected, got = plain(x), frozen(x)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_level_choice_and_model_kwargs():
    raw = torchvision_backbone('bh_hrnet_w18', returned_layers=(0, 1, 2, 3, 4), feature_location='')
    assert raw.body.feature_info.channels() == [64, 18, 36, 72, 144]
    assert raw.strides == (2, 4, 8, 16, 32, 64) and raw.feature_names == ['0', '1', '2', '3', '4']
    out = raw(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in out.values()] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


def test_tiny_anchor_generator_is_the_authors_layout():
    gen = tiny_anchor_generator()
    assert gen.num_anchors_per_location() == [12] * 5
    assert gen.sizes[0] == tuple(s * 4 for s in TINY_ANCHOR_SCALES)  # 6, 10, 14.8, 32 px at stride 4
    assert gen.sizes[-1] == tuple(s * 64 for s in TINY_ANCHOR_SCALES)
    assert gen.aspect_ratios[0] == (0.4, 0.8, 1.4)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match=r'trainable_stages=6 is out of range for bh_resnet50: use 0\.\.5'):
        torchvision_backbone('bh_resnet50', trainable_stages=6)
    with pytest.raises(ValueError, match='norm_layer must be torchvision.ops.FrozenBatchNorm2d .* SyncBatchNorm'):
        torchvision_backbone('bh_resnet50', norm_layer=nn.GroupNorm)
    with pytest.raises(ValueError, match=r'drop out_indices= and use returned_layers'):
        torchvision_backbone('bh_resnet50', out_indices=(1, 2))
    with pytest.raises(ValueError, match='pass trainable_stages'):
        torchvision_backbone('bh_resnet50', frozen_stages=1)
    with pytest.raises(ValueError, match='non-empty sequence'):
        torchvision_backbone('bh_resnet50', returned_layers=())
    with pytest.raises(ValueError, match=r'9 is not a feature level of bh_resnet50'):
        torchvision_backbone('bh_resnet50', returned_layers=(1, 9))
    with pytest.raises(RuntimeError, match='no pretrained weights are registered for bh_resnet50'):
        torchvision_backbone('bh_resnet50', pretrained=True)

    class Custom(ExtraFPNBlock):
        def forward(self, results, x, names):
            return results, names

    with pytest.raises(ValueError, match=r'tiny_anchor_generator\(strides=\.\.\.\)'):
        _ = torchvision_backbone('bh_resnet50', extra_blocks=Custom()).strides


def test_example_smoke_run_prints_loss_and_coco_ap(capsys):
    _require('pycocotools')
    spec = importlib.util.spec_from_file_location('train_tiny_detector', REPO / 'examples' / 'train_tiny_detector.py')
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(
        [
            '--iterations',
            '2',
            '--log-every',
            '1',
            '--image-size',
            '128',
            '96',
            '--eval-images',
            '2',
            '--batch-size',
            '1',
        ]
    )
    out = capsys.readouterr().out
    assert 'iter    2  loss' in out and 'COCO bbox on 2 held-out images' in out
    assert len(result['curve']) == 2 and all(torch.isfinite(torch.tensor(loss)) for _, loss in result['curve'])
    assert len(result['stats']) == 12
