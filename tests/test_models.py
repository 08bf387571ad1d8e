"""One parametrised suite over every registered BH model: create, forward, features, timm habits."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

MODELS = timm.list_models('bh_*')
# HRNet's fuse layers up-sample by exact powers of two, so (as timm's hrnet_w*) they need sides that are multiples
# of 32; they refuse other sizes with a clear error instead of a shape mismatch deep inside.
ALIGNED_INPUT_ONLY = {name for name in MODELS if name.startswith('bh_hrnet')}
SMALL = (2, 3, 96, 128)  # N, C, H, W: small enough for 2 CPU cores, not square, multiple of 32


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters()}


def _features_model_like(name: str, model: nn.Module, **kwargs) -> nn.Module:
    """A features_only model holding ``model``'s weights (the keys are the same, minus the classifier)."""
    features = timm.create_model(name, features_only=True, **kwargs)
    missing, unexpected = features.load_state_dict(model.state_dict(), strict=False)
    assert not missing, missing
    assert set(unexpected) <= {'fc.weight', 'fc.bias', 'classifier.weight', 'classifier.bias'} | {
        k for k in unexpected if k.startswith(('incre_modules', 'downsamp_modules', 'final_layer'))
    }
    return features.eval()


def test_registry_lists_models():
    assert MODELS, 'no bh_* model registered'
    assert 'bh_resnet50' in MODELS


@pytest.mark.parametrize('name', MODELS)
def test_forward_backward(name):
    model = timm.create_model(name, num_classes=10)
    x = torch.randn(SMALL)
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    missing = [n for n, g in _grads(model).items() if g is None]
    assert not missing, f'parameters without gradient: {missing[:5]}'
    assert all(torch.isfinite(g).all() for g in _grads(model).values())


@pytest.mark.parametrize('name', MODELS)
def test_num_classes_in_chans_global_pool(name):
    model = timm.create_model(name, num_classes=0, in_chans=1).eval()
    x = torch.randn(1, 1, 64, 96)
    assert model(x).shape == (1, model.num_features)
    unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
    assert unpooled(torch.randn(1, 3, 64, 96)).shape[-2:] == (2, 3)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5)
    assert model.get_classifier().out_features == 5


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('hw', [(512, 640), (375, 500)], ids=['640x512', '500x375'])
def test_features_only_shapes_match_feature_info(name, hw):
    model = timm.create_model(name, features_only=True).eval()
    x = torch.randn(1, 3, *hw)
    if name in ALIGNED_INPUT_ONLY and any(side % 32 for side in hw):
        with pytest.raises(ValueError, match=r'does not split into the HRNet branches.*multiples of 32'):
            model(x)
        return
    with torch.no_grad():
        feats = model(x)
    info = model.feature_info
    assert [f.shape[1] for f in feats] == info.channels()
    assert info.reduction()[:2] == [2, 4], 'tiny objects need the stride-2 and stride-4 levels'
    for feat, reduction in zip(feats, info.reduction(), strict=True):
        assert tuple(feat.shape[-2:]) == (math.ceil(hw[0] / reduction), math.ceil(hw[1] / reduction))


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('out_indices', [(1, 2, 3, 4), (0, 2), (-2, -1), 3, (4,)], ids=str)
def test_out_indices(name, out_indices):
    full = timm.create_model(name, features_only=True)
    model = timm.create_model(name, features_only=True, out_indices=out_indices).eval()
    n = len(full.feature_info.channels())
    expected = list(range(n - out_indices, n)) if isinstance(out_indices, int) else [i % n for i in out_indices]
    assert model.feature_info.out_indices == tuple(expected)
    assert model.feature_info.channels() == [full.feature_info.channels()[i] for i in expected]
    feats = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates_equal_features_only(name):
    model = timm.create_model(name).eval()
    if not hasattr(model, 'forward_intermediates'):
        pytest.skip(f'{name} has no forward_intermediates (same as its timm base class)')
    features = _features_model_like(name, model)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        expected = features(x)
        assert torch.equal(final, model.forward_features(x))
        only = model.forward_intermediates(x, indices=(1, -1), intermediates_only=True, stop_early=True)
    assert len(intermediates) == len(expected)
    for a, b in zip(intermediates, expected, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(only[0], expected[1])
    torch.testing.assert_close(only[1], expected[-1])


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('features_only', [False, True], ids=['classifier', 'features'])
def test_torch_export_round_trip(name, features_only):
    model = timm.create_model(name, features_only=features_only).eval()
    x = torch.randn(1, 3, 64, 96)
    program = torch.export.export(model, (x,))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    torch.testing.assert_close(got, expected)


_SCRIPT_CHECK = """
import sys, warnings, torch, timm, bh_models
torch.manual_seed(0)
model = timm.create_model(sys.argv[1]).eval()
x = torch.randn(1, 3, 64, 96)
with warnings.catch_warnings():
    warnings.simplefilter('error', FutureWarning)
    try:
        torch.jit.script(model)
    except FutureWarning:
        pass  # torch 2.14 deprecates torch.jit.script; it must still work
    else:
        raise AssertionError('expected the torch.jit.script deprecation warning')
with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter('ignore', FutureWarning)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
print('scripted ok')
"""


@pytest.mark.parametrize('name', MODELS)
def test_torchscript_and_fx(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))
    # TorchScript in a fresh interpreter: its process-wide type cache is shared with every jit.trace/script that ran
    # before in the test session (seen: a trace of another HRNet width leaking into this script in CI order)
    proc = subprocess.run(
        [sys.executable, '-c', _SCRIPT_CHECK, name], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0 and 'scripted ok' in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize('name', MODELS)
def test_grad_checkpointing_same_output(name):
    model = timm.create_model(name, num_classes=4, drop_rate=0.0).eval()
    x = torch.randn(1, 3, 64, 96, requires_grad=True)
    expected = model(x)
    model.set_grad_checkpointing(True)
    got = model(x)
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _stage_params(model: nn.Module, stage: int) -> list[tuple[str, nn.Parameter]]:
    prefixes = tuple(f'{n}.' for n in model.stage_names[stage])
    return [(n, p) for n, p in model.named_parameters() if n.startswith(prefixes)]


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('features_only', [False, True], ids=['classifier', 'features'])
def test_frozen_stages_get_no_gradient_and_stay_eval(name, features_only):
    model = timm.create_model(name, features_only=features_only, frozen_stages=1)
    model.train()
    frozen = _stage_params(model, 0) + _stage_params(model, 1)
    trainable = _stage_params(model, 2)
    assert frozen and trainable
    assert not any(p.requires_grad for _, p in frozen)
    frozen_bn = [m for n in model.stage_names[0] + model.stage_names[1] for m in getattr(model, n).modules()]
    frozen_bn = [m for m in frozen_bn if isinstance(m, nn.BatchNorm2d)]
    stats_before = [m.running_mean.clone() for m in frozen_bn]
    out = model(torch.randn(2, 3, 64, 96))
    loss = sum(o.float().mean() for o in out) if features_only else out.mean()
    loss.backward()
    assert all(p.grad is None for _, p in frozen)
    assert all(p.grad is not None for _, p in trainable)
    assert all(not m.training for m in frozen_bn)
    for before, m in zip(stats_before, frozen_bn, strict=True):
        assert torch.equal(before, m.running_mean), 'a frozen BN updated its running statistics'
    trainable_bn = [m for m in getattr(model, model.stage_names[2][0]).modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training for m in trainable_bn)


@pytest.mark.parametrize('name', MODELS)
def test_norm_eval_keeps_bn_stats_but_trains_affine(name):
    model = timm.create_model(name, features_only=True, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_var.clone() for m in bns]
    sum(f.mean() for f in model(torch.randn(2, 3, 64, 96))).backward()
    assert all(not m.training for m in bns)
    assert all(torch.equal(b, m.running_var) for b, m in zip(before, bns, strict=True))
    assert any(m.weight.grad is not None for m in bns)


# --- bad input: each error names the problem and the valid choices -----------------------------------------


@pytest.mark.parametrize('name', MODELS)
def test_bad_out_indices(name):
    with pytest.raises(ValueError, match=r'9 is not a feature level .* valid indices are 0\.\.4'):
        timm.create_model(name, features_only=True, out_indices=(9,))
    with pytest.raises(ValueError, match='distinct and increasing'):
        timm.create_model(name, features_only=True, out_indices=(2, 1))
    with pytest.raises(ValueError, match='last 7 levels'):
        timm.create_model(name, features_only=True, out_indices=7)


@pytest.mark.parametrize('name', MODELS)
def test_bad_input_tensor(name):
    model = timm.create_model(name).eval()
    with pytest.raises(ValueError, match=r'built for 3-channel input but got 4 channels.*in_chans=4'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r'smaller than the total stride .* at least 32x32'):
        model(torch.randn(1, 3, 16, 64))
    features = timm.create_model(name, features_only=True).eval()
    with pytest.raises(ValueError, match='in_chans=1'):
        features(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize('name', MODELS)
def test_bad_frozen_stages(name):
    with pytest.raises(ValueError, match=r'frozen_stages=9 is out of range: use -1'):
        timm.create_model(name, frozen_stages=9)


def test_unknown_tag_and_missing_weights():
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nope' for bh_resnet50; registered tags"):
        timm.create_model('bh_resnet50.nope')
    untagged_without_weights = [n for n in MODELS if not timm.is_model_pretrained(n)]
    for name in untagged_without_weights:
        with pytest.raises(RuntimeError, match=r'no pretrained weights are registered .* pretrained=False'):
            timm.create_model(name, pretrained=True)


def test_unknown_model_lists_choices():
    import bh_models

    with pytest.raises(ValueError, match=r"unknown model 'bh_resnet5'\. Did you mean bh_resnet50\b.*BH models: "):
        bh_models.create_model('bh_resnet5')


def test_registry_refuses_to_overwrite_a_timm_model():
    from bh_models.builder import register_bh_model

    def resnet50(pretrained=False, **kwargs):  # same name as timm's own resnet50
        raise AssertionError('must not be registered')

    with pytest.raises(RuntimeError, match=r"cannot register 'resnet50': timm already has a model"):
        register_bh_model(resnet50)
    assert timm.create_model('resnet50').__class__.__name__ == 'ResNet'


@pytest.mark.parametrize('name', MODELS)
def test_pretrained_from_a_local_safetensors_file(name, tmp_path):
    """``pretrained_cfg_overlay=dict(file=...)`` goes through timm's own loader, classifier and features alike."""
    from safetensors.torch import save_file

    source = timm.create_model(name).eval()
    path = tmp_path / 'weights.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    features = timm.create_model(name, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path)))
    expected_features = _features_model_like(name, source)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
        for got, expected in zip(features.eval()(x), expected_features(x), strict=True):
            torch.testing.assert_close(got, expected)


def test_output_stride_dilates_the_last_stages():
    model = timm.create_model('bh_resnet50', features_only=True, output_stride=16).eval()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 16]
    assert model(torch.randn(1, 3, 64, 64))[-1].shape[-2:] == (4, 4)
