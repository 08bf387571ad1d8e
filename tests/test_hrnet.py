"""BH-HRNet specifics (the shared create/forward/features/export suite is tests/test_models.py)."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.hrnet import HighResolutionNet
from torch import nn

from bh_models.hrnet import BH_HRNET_CFGS, BHHighResolutionNetFeatures
from bh_models.layers import GuardedConv2d

NAMES = ('bh_hrnet_w18', 'bh_hrnet_w32')
HW = (128, 160)  # small, not square, multiple of 32


def _x(n: int = 1, hw: tuple[int, int] = HW) -> torch.Tensor:
    return torch.randn(n, 3, *hw)


def test_bh_stem_and_timm_parameter_names():
    model = timm.create_model('bh_hrnet_w18')
    assert isinstance(model.conv1, GuardedConv2d) and model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert model.conv1.min_input_size == 32 and model.conv1.network_name == 'bh_hrnet_w18'
    assert model.conv2.stride == (2, 2) and model.conv2.out_channels == 64
    pool = model.maxpool
    assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert list(model._modules)[:8] == ['conv1', 'bn1', 'act1', 'conv2', 'bn2', 'act2', 'maxpool', 'layer1']
    # same keys and shapes as timm's own class built from the same config
    reference = HighResolutionNet(BH_HRNET_CFGS['bh_hrnet_w18']).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.items()}


def test_layouts_are_bottom_heavy_with_table4_deepest_branch():
    for name, deepest in (('bh_hrnet_w18', (4, 12, 6)), ('bh_hrnet_w32', (4, 8, 3))):
        cfg = BH_HRNET_CFGS[name]
        stages = [cfg[f'stage{s}'] for s in (2, 3, 4)]
        assert tuple(s['num_modules'] * s['num_blocks'][-1] for s in stages) == deepest
        for s in stages:
            assert list(s['num_blocks']) == sorted(s['num_blocks'], reverse=True)


@pytest.mark.parametrize('location', ['incre', ''])
def test_features_only_matches_timm_hrnet_w18(location):
    model = timm.create_model('bh_hrnet_w18', features_only=True, feature_location=location).eval()
    reference = timm.create_model('hrnet_w18', features_only=True, feature_location=location)
    assert isinstance(model, BHHighResolutionNetFeatures)
    assert model.feature_info.get_dicts() == reference.feature_info.get_dicts()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        feats = model(_x())
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    for f, r in zip(feats, model.feature_info.reduction(), strict=True):
        assert tuple(f.shape[-2:]) == (HW[0] // r, HW[1] // r)
    assert 'classifier.weight' not in model.state_dict()
    assert model.pretrained_cfg['architecture'] == 'bh_hrnet_w18'


def test_stem_level_is_before_the_max_pool():
    model = timm.create_model('bh_hrnet_w18', features_only=True, out_indices=(0,)).eval()
    x = _x()
    with torch.no_grad():
        (stem,) = model(x)
        expected = model.act2(model.bn2(model.conv2(model.act1(model.bn1(model.conv1(x))))))
    torch.testing.assert_close(stem, expected)


@pytest.mark.parametrize(
    'out_indices, expected', [((1, 2, 3, 4), (1, 2, 3, 4)), ((0, 2), (0, 2)), ((-2, -1), (3, 4)), (3, (2, 3, 4))]
)
def test_out_indices(out_indices, expected):
    model = timm.create_model('bh_hrnet_w18', features_only=True, feature_location='', out_indices=out_indices)
    assert model.feature_info.out_indices == expected
    with torch.no_grad():
        feats = model.eval()(_x())
    assert [f.shape[1] for f in feats] == model.feature_info.channels() == [(64, 18, 36, 72, 144)[i] for i in expected]


def test_bad_out_indices_and_feature_location():
    with pytest.raises(ValueError, match=r'9 is not a feature level of BH-HRNet-W18.* valid indices are 0\.\.4'):
        timm.create_model('bh_hrnet_w18', features_only=True, out_indices=(9,))
    with pytest.raises(ValueError, match='distinct and increasing'):
        timm.create_model('bh_hrnet_w18', features_only=True, out_indices=(-1, 0))
    with pytest.raises(ValueError, match="feature_location must be 'incre'"):
        timm.create_model('bh_hrnet_w18', features_only=True, feature_location='stem')


def test_bad_input_is_a_clear_error():
    model = timm.create_model('bh_hrnet_w18').eval()
    with pytest.raises(ValueError, match=r'ceil\(H/4\) and ceil\(W/4\) must be multiples of 8'):
        model(torch.randn(1, 3, 100, 160))
    with pytest.raises(ValueError, match='in_chans=1'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='at least 32x32'):
        model(torch.randn(1, 3, 16, 64))


def test_classifier_habits():
    x = torch.randn(1, 1, 64, 96)
    model = timm.create_model('bh_hrnet_w18', num_classes=0, in_chans=1).eval()
    assert model(x).shape == (1, 2048)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5) and model.get_classifier().out_features == 5
    unpooled = timm.create_model('bh_hrnet_w18', num_classes=0, global_pool='').eval()
    assert unpooled(torch.randn(1, 3, 64, 96)).shape == (1, 2048, 2, 3)


def test_forward_intermediates_and_prune():
    model = timm.create_model('bh_hrnet_w18').eval()
    features = timm.create_model('bh_hrnet_w18', features_only=True).eval()
    features.load_state_dict(model.state_dict(), strict=False)
    getter = timm.create_model('bh_hrnet_w18', features_only=True, feature_cls='getter').eval()
    getter.model.load_state_dict(model.state_dict(), strict=False)  # timm's generic wrapper, via forward_intermediates
    x = _x()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        for got, expected in zip(intermediates, features(x), strict=True):
            torch.testing.assert_close(got, expected)
        for got, expected in zip(getter(x), intermediates, strict=True):
            torch.testing.assert_close(got, expected)
        model.prune_intermediate_layers(indices=(0,))
        stem = model.forward_features(x)
    assert stem.shape == (1, 64, HW[0] // 2, HW[1] // 2)
    torch.testing.assert_close(stem, intermediates[0])


def test_grad_checkpointing_same_output_and_grads():
    model = timm.create_model('bh_hrnet_w18', num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    model(x).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], msg=n)


def _stage_params(model, stages):
    prefixes = tuple(f'{n}.' for s in stages for n in model.stage_names[s])
    return [p for n, p in model.named_parameters() if n.startswith(prefixes)]


@pytest.mark.parametrize('features_only', [False, True], ids=['classifier', 'features'])
def test_frozen_stages(features_only):
    model = timm.create_model('bh_hrnet_w18', features_only=features_only, frozen_stages=2).train()
    assert model.stage_names[2] == ('transition1', 'stage2')
    frozen, trainable = _stage_params(model, (0, 1, 2)), _stage_params(model, (3, 4))
    assert frozen and trainable and not any(p.requires_grad for p in frozen)
    frozen_bn = [m for n in sum(model.stage_names[:3], ()) for m in getattr(model, n).modules()]
    frozen_bn = [m for m in frozen_bn if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in frozen_bn]
    out = model(torch.randn(2, 3, 64, 96))
    (sum(o.mean() for o in out) if features_only else out.mean()).backward()
    assert all(p.grad is None for p in frozen) and all(p.grad is not None for p in trainable)
    assert all(not m.training for m in frozen_bn)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen_bn, strict=True))
    assert model.stage3.training and model.transition3.training
    with pytest.raises(ValueError, match='frozen_stages=5 is out of range'):
        timm.create_model('bh_hrnet_w18', features_only=features_only, frozen_stages=5)


@pytest.mark.parametrize('name, channels', [('bh_hrnet_w18', 18), ('bh_hrnet_w32', 32)])
def test_paper_input_size(name, channels):
    """640x512 (Table 4's input), once per model: every level at its stride, raw branches at the BH widths."""
    model = timm.create_model(name, features_only=True, feature_location='').eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 512, 640))
    levels = zip([64] + [channels * 2**i for i in range(4)], (2, 4, 8, 16, 32), strict=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 512 // r, 640 // r) for c, r in levels]
