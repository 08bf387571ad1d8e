"""Params and GFLOPs in the paper's conventions (bh_models.complexity) on real timm models with real ptflops.

The 640x512 counts run on the meta device (ptflops reads only shapes); ``test_meta_counts_equal_real_counts``
checks that this gives the same numbers as running the convolutions on the CPU.
"""

from __future__ import annotations

import ptflops
import pytest
import timm
import torch
from torch import nn

from bh_models.complexity import (
    PARAM_CONVENTIONS,
    SCOPES,
    BackboneTrunk,
    build_for_scope,
    count_flops,
    count_params,
    measure,
    model_family,
    resolve_device,
)
from bh_models.layers import GuardedConv2d
from bh_models.paper import INPUT_SIZE_HW, TABLE4

ROWS = {row.model: row for row in TABLE4}
STANDARD = ('resnet50', 'bh_resnet50', 'hrnet_w32', 'hrnet_w18')

# NOTES.md: (params M by convention, GFLOPs by scope), 3 decimals, at 640x512
NOTES = {
    'resnet50': ({'all': 23.508, 'conv_trainable_frozen1': 23.233}, {'backbone': 26.905, 'backbone+head': 26.907}),
    'bh_resnet50': ({'all': 10.948, 'conv': 10.913}, {'backbone': 27.115, 'backbone+head': 27.118}),
    'hrnet_w18': ({'all': 9.562}, {'backbone': 21.711}),
    'hrnet_w32': ({'all': 29.306}, {'backbone': 51.934}),
}
# exact counts of timm's own models (architecture-defined, so they must never drift)
EXACT = {
    'resnet50': ({'all': 23_508_032, 'conv_trainable_frozen1': 23_232_512}, {'backbone': 26_904_657_920}),
    'hrnet_w18': ({'all': 9_562_260}, {'backbone': 21_711_312_640}),
    'hrnet_w32': ({'all': 29_305_536}, {'backbone': 51_933_491_200}),
}


@pytest.fixture
def one_thread():
    """Real CPU passes on one thread: 2 OpenMP threads on a shared 2-core machine stall erratically (5-20 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def measured():
    """Table 4 counts of the standard rows at 640x512 (meta device)."""
    return {name: measure(name, INPUT_SIZE_HW, 'meta') for name in STANDARD}


@pytest.mark.parametrize('name', STANDARD)
def test_reproduces_table4_row(measured, name):
    row, result = ROWS[name], measured[name]
    params_m, gflops = result.params_m(row.param_convention), result.gflops(row.flops_scope)
    assert row.params_ok(params_m), f'{name}: {params_m:.3f} M ({row.param_convention}) vs paper {row.params_m}'
    assert row.gflops_ok(gflops), f'{name}: {gflops:.3f} G ({row.flops_scope}) vs paper {row.gflops}'
    assert round(params_m, 2) == row.params_m
    assert round(gflops, 2) == row.gflops


@pytest.mark.parametrize('name', STANDARD)
def test_matches_notes_to_three_decimals(measured, name):
    params, flops = NOTES[name]
    for convention, value in params.items():
        assert measured[name].params_m(convention) == pytest.approx(value, abs=1e-3), convention
    for scope, value in flops.items():
        assert measured[name].gflops(scope) == pytest.approx(value, abs=1e-3), scope


@pytest.mark.parametrize('name', sorted(EXACT))
def test_exact_counts_of_timm_models(measured, name):
    params, flops = EXACT[name]
    assert {k: measured[name].params[k] for k in params} == params
    assert {k: measured[name].flops[k] for k in flops} == flops


def test_resnet50_paper_gflops_needs_the_head(measured):
    """The printed 26.91 is the trunk + avg-pool + fc (26.907); the trunk alone is 26.905."""
    result = measured['resnet50']
    assert round(result.gflops('backbone+head'), 2) == 26.91
    assert result.gflops('backbone') == pytest.approx(26.905, abs=1e-3)
    assert not ROWS['resnet50'].gflops_ok(result.gflops('backbone'))


def test_every_convention_and_scope_reported(measured):
    for result in measured.values():
        assert set(result.params) == set(PARAM_CONVENTIONS)
        assert set(result.flops) == set(SCOPES)
        assert result.params['all'] > result.params['conv'] > result.params['conv_trainable_frozen1'] > 0
        assert result.flops['backbone+head'] > result.flops['backbone'] > 0
        assert result.input_size_hw == INPUT_SIZE_HW


@pytest.mark.parametrize('name', ['resnet50', 'bh_resnet50', 'hrnet_w18'])
def test_meta_counts_equal_real_counts(name, one_thread):
    """Counting on meta tensors (no arithmetic) gives exactly what a real CPU forward pass gives."""
    real = measure(name, (128, 160), 'cpu')
    meta = measure(name, (128, 160), 'meta')
    assert (real.params, real.flops) == (meta.params, meta.flops)
    assert real.device == 'cpu'


def test_real_cpu_count_at_paper_size(one_thread):
    model = build_for_scope('bh_resnet50', 'backbone+head', 'cpu')
    assert count_flops(model, INPUT_SIZE_HW) == measure('bh_resnet50', INPUT_SIZE_HW, 'meta').flops['backbone+head']


def test_default_device_is_cuda_else_cpu():
    assert resolve_device().type == ('cuda' if torch.cuda.is_available() else 'cpu')
    assert resolve_device('meta').type == 'meta'


def test_subclassed_conv_is_counted():
    """ptflops matches module types exactly: without help it would count bh_resnet50's GuardedConv2d stem as 0."""
    model = build_for_scope('bh_resnet50', 'backbone', 'meta')
    assert type(model.net.conv1) is GuardedConv2d
    plain, _ = ptflops.get_model_complexity_info(
        model, (3, *INPUT_SIZE_HW), as_strings=False, print_per_layer_stat=False, backend='pytorch',
        backend_specific_config={'count_functional': False},
    )  # fmt: skip
    stem_macs = 3 * 3 * 3 * 64 * INPUT_SIZE_HW[0] * INPUT_SIZE_HW[1]  # 3x3 conv, 3 -> 64 channels, stride 1
    assert count_flops(model, INPUT_SIZE_HW) - plain == stem_macs


HEADLESS = [('resnet50', dict(num_classes=0, global_pool='')), ('hrnet_w18', dict(head=''))]


@pytest.mark.parametrize(('name', 'kwargs'), HEADLESS)
def test_backbone_scope_is_timms_headless_model(name, kwargs):
    """'backbone' = timm's own head-less construction, for each family."""
    with torch.device('meta'):
        headless = timm.create_model(name, **kwargs)
    trunk = build_for_scope(name, 'backbone', 'meta')
    assert isinstance(trunk, BackboneTrunk)
    assert count_flops(trunk, (128, 160)) == count_flops(headless, (128, 160))
    assert count_params(trunk)['all'] == sum(p.numel() for p in headless.parameters())


def test_hrnet_trunk_returns_the_four_raw_branches():
    trunk = build_for_scope('hrnet_w18', 'backbone', 'meta')
    with torch.inference_mode():
        out = trunk(torch.zeros(1, 3, 128, 160, device='meta'))
    assert [tuple(t.shape[1:]) for t in out] == [(18 * 2**i, 32 // 2**i, 40 // 2**i) for i in range(4)]


@pytest.mark.parametrize('name', ['resnet50', 'hrnet_w18', 'bh_resnet50'])
def test_params_ignore_the_classifier_head(name):
    full = build_for_scope(name, 'backbone+head', 'meta')
    trunk = build_for_scope(name, 'backbone', 'meta')
    assert count_params(full) == count_params(trunk)
    assert sum(p.numel() for p in full.parameters()) > count_params(full)['all']


def test_frozen1_convention_uses_stage_names():
    model = timm.create_model('bh_resnet50', device='meta')
    frozen = tuple(f'{n}.' for n in model.stage_names[0] + model.stage_names[1])
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    expected = sum(m.weight.numel() for n, m in convs.items() if not f'{n}.'.startswith(frozen))
    assert count_params(model)['conv_trainable_frozen1'] == expected


def test_unknown_family_and_scope_are_rejected():
    with pytest.raises(TypeError, match='neither a timm ResNet nor'):
        model_family(nn.Sequential(nn.Conv2d(3, 8, 3)))
    with pytest.raises(ValueError, match='unknown FLOP scope'):
        build_for_scope('resnet50', 'neck', 'meta')
