"""``bh_models.optimize_for_inference``: same outputs as eager (1e-4 relative) on every model, and what it folds."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import bh_models
from bh_models.inference import (
    StripTiledStem,
    available_backends,
    default_candidates,
    fold_batch_norms,
    max_relative_error,
    optimize_for_inference,
    tile_stems,
)
from bh_models.layers import GuardedConv2d

BH_MODELS = timm.list_models('bh_*')
TIMM_MODELS = ['resnet50', 'hrnet_w18']
SMALL = (1, 3, 96, 128)  # N, C, H, W: a multiple of 32 (HRNet), not square
RTOL = 1e-4


def _model(name: str, features_only: bool) -> nn.Module:
    return timm.create_model(name, features_only=features_only).eval()


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize('name', BH_MODELS + TIMM_MODELS)
@pytest.mark.parametrize('features_only', [False, True], ids=['classifier', 'features'])
def test_equal_to_eager_every_model(name, features_only):
    """Folding, stem tiling and channels_last keep every output within 1e-4 of the eager model."""
    model = _model(name, features_only)
    x = torch.randn(SMALL)
    opt = optimize_for_inference(model, x, backend='eager')
    assert len(opt.folded) == _bn_count(model), 'every BatchNorm of these models follows a convolution'
    assert _bn_count(opt.module) == 0
    assert opt.tiled == (['conv1'] if name.startswith('bh_') else [])  # only the stride-1 BH stems
    with torch.no_grad():
        expected, got = model(x), opt(x)
    assert type(got) is type(expected)
    assert max_relative_error(got, expected) <= RTOL
    assert opt.max_rel_error <= RTOL


@pytest.mark.parametrize('name', ['bh_resnet50', pytest.param('bh_hrnet_w18', marks=pytest.mark.slow)])
def test_jit_backend_equal_and_retraced_per_shape(name):
    model = _model(name, features_only=True)
    x = torch.randn(SMALL)
    opt = optimize_for_inference(model, x, backend='jit')
    assert opt.backend == 'jit'
    other = torch.randn(2, 3, 64, 160)
    with torch.no_grad():
        assert max_relative_error(opt(x), model(x)) <= RTOL
        # the tiled stem unrolls its strips in a trace: a new shape gets its own trace, not a wrong answer
        assert max_relative_error(opt(other), model(other)) <= RTOL
    assert len(opt._runner.traces) == 2


@pytest.mark.slow
@pytest.mark.parametrize('name', ['bh_resnet50', 'bh_hrnet_w18'])
def test_inductor_backend_equal(name):
    if 'inductor' not in available_backends('cpu'):
        pytest.skip('inductor cannot compile here (no working C++ compiler)')
    model = _model(name, features_only=True)
    x = torch.randn(SMALL)
    opt = optimize_for_inference(model, x, backend='inductor')
    with torch.no_grad():
        assert max_relative_error(opt(x), model(x)) <= RTOL


def test_auto_times_every_candidate_and_keeps_the_fastest():
    model = _model('bh_resnet50', features_only=False)
    candidates = ('eager', 'eager+tiled', 'jit')
    opt = optimize_for_inference(model, torch.randn(SMALL), candidates=candidates, repeats=1)
    assert tuple(c.name for c in opt.candidates) == candidates
    assert all(c.latency_ms is not None and not c.error for c in opt.candidates)
    fastest = min(opt.candidates, key=lambda c: c.latency_ms)
    assert (opt.backend, bool(opt.tiled)) == (fastest.backend, fastest.tiled)
    assert opt.tiled == (['conv1'] if fastest.tiled else [])


def test_default_candidates():
    cpu = default_candidates('cpu')
    assert cpu[:3] == ('eager', 'eager+tiled', 'jit')
    assert cpu[3:] == (('inductor+tiled',) if 'inductor' in available_backends('cpu') else ())
    # a model without a tileable stem: '+tiled' candidates collapse into the untiled ones
    opt = optimize_for_inference(_model('resnet50', False), torch.randn(SMALL), candidates=('eager', 'eager+tiled'))
    assert [c.name for c in opt.candidates] == ['eager'] and opt.tiled == []


def test_model_passed_in_is_not_modified():
    model = timm.create_model('bh_resnet50').eval()
    state = copy.deepcopy(model.state_dict())
    optimize_for_inference(model, torch.randn(SMALL), backend='eager')
    assert _bn_count(model) == 53 and model.conv1.bias is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_default_example_input_other_shapes_and_attribute_passthrough():
    model = timm.create_model('bh_resnet50', features_only=True).eval()
    opt = optimize_for_inference(model, backend='eager')  # one image at pretrained_cfg['input_size']
    other = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert max_relative_error(opt(other), model(other)) <= RTOL
    assert opt.feature_info.channels() == model.feature_info.channels()
    assert 'backend=' in repr(opt)
    assert not opt.module.training


def test_guarded_stem_keeps_its_type_and_input_check():
    """The BH stem is a GuardedConv2d: folded like an nn.Conv2d, and a bad input still gets the helpful error."""
    model = timm.create_model('bh_hrnet_w18').eval()
    folded = copy.deepcopy(model)
    pairs = fold_batch_norms(folded)
    assert ('conv1', 'bn1') in pairs
    assert type(folded.conv1) is GuardedConv2d and folded.conv1.bias is not None
    opt = optimize_for_inference(model, torch.randn(SMALL), backend='eager', tile_stem=False)
    with pytest.raises(ValueError, match='in_chans=4'):
        opt(torch.randn(1, 4, 64, 64))


def test_conv_feeding_two_consumers_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y + self.bn2(self.conv2(y))  # conv's output is used raw too: cannot fold bn

    model = Branchy().eval()
    for bn in (model.bn, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    assert fold_batch_norms(copy.deepcopy(model)) == [('conv2', 'bn2')]
    x = torch.randn(2, 3, 16, 16)
    opt = optimize_for_inference(model, x, backend='eager')
    with torch.no_grad():
        assert max_relative_error(opt(x), model(x)) <= RTOL


def test_timm_batchnorm_act_folds_to_its_activation():
    from timm.layers import ConvNormAct

    model = nn.Sequential(ConvNormAct(3, 8, 3, act_layer=nn.ReLU), ConvNormAct(8, 4, 1, act_layer=nn.SiLU)).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 16, 16)
    folded = copy.deepcopy(model)
    assert len(fold_batch_norms(folded)) == 2
    assert _bn_count(folded) == 0
    assert isinstance(folded[1].bn[1], nn.SiLU)  # the activation of BatchNormAct2d survives the fold
    with torch.no_grad():
        assert max_relative_error(folded(x), model(x)) <= RTOL


@pytest.mark.parametrize('name', ['bh_resnet50', 'bh_hrnet_w18'])
@pytest.mark.parametrize('hw', [(96, 128), (97, 131)], ids=['aligned', 'odd'])
def test_tiled_stem_in_many_strips_is_exact(name, hw):
    """Strips of one output row at a time, on an odd size too: same numbers as the untiled stem."""
    model = timm.create_model(name).eval()
    prepared = copy.deepcopy(model)
    fold_batch_norms(prepared)
    assert tile_stems(prepared) == ['conv1']
    stem = prepared.conv1
    assert isinstance(stem, StripTiledStem)
    stem.budget_bytes, stem.max_strips = 1, 10**6  # one reducer output row per strip
    x = torch.randn(2, 3, *hw)
    reference_stem = copy.deepcopy(model)
    fold_batch_norms(reference_stem)
    with torch.no_grad():
        if name == 'bh_resnet50':
            expected = reference_stem.maxpool(reference_stem.act1(reference_stem.conv1(x)))
        else:
            expected = reference_stem.conv2(reference_stem.act1(reference_stem.conv1(x)))
        got = stem(x)
    assert got.shape == expected.shape
    assert max_relative_error(got, expected) <= 1e-5


def test_errors_name_the_fix():
    model = timm.create_model('bh_resnet50').eval()
    with pytest.raises(ValueError, match=r"unknown backend 'tvm'.*auto"):
        optimize_for_inference(model, torch.randn(SMALL), backend='tvm')
    with pytest.raises(ValueError, match=r"unknown candidate 'jit\+fast'.*\+tiled"):
        optimize_for_inference(model, torch.randn(SMALL), candidates=('jit+fast',))
    failed = r'no backend could optimize BHResNet.*eager\+tiled: max relative error.*fold_bn'
    with pytest.raises(RuntimeError, match=failed):
        optimize_for_inference(model, torch.randn(SMALL), backend='eager', rtol=-1.0)
    with pytest.raises(ValueError, match='pass example_input'):
        optimize_for_inference(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(RuntimeError, match=r'model\.eval\(\)'):
        fold_batch_norms(timm.create_model('bh_resnet50').train())


def test_exported_from_the_package():
    assert bh_models.optimize_for_inference is optimize_for_inference
    assert 'optimize_for_inference' in bh_models.__all__
