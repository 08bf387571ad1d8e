"""``bh-models convert``: an MMDetection-layout checkpoint (as the authors' bh50_in1k.pth) to a safetensors backbone."""

from __future__ import annotations

import socket
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch

from bh_models import cli
from bh_models.convert import ConversionError, convert_checkpoint
from bh_models.weights import WeightFileError

X = torch.randn(1, 3, 64, 96)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError('tests must not use the network')

    monkeypatch.setattr(socket.socket, 'connect', refuse)


@pytest.fixture(scope='module')
def backbone() -> torch.nn.Module:
    """The network the checkpoint holds: bh_resnet50 without classifier, with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = timm.create_model('bh_resnet50', num_classes=0).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def mmdet_checkpoint(backbone: torch.nn.Module, path: Path, edit=None) -> Path:
    """Write ``path`` in MMDetection 2.x's layout: meta, a state_dict with backbone/neck/heads, an optimizer."""
    state = OrderedDict(('backbone.' + k, v.clone()) for k, v in backbone.state_dict().items())
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(256, 256, 1, 1)
    state['neck.lateral_convs.0.conv.bias'] = torch.randn(256)
    state['rpn_head.rpn_conv.weight'] = torch.randn(256, 256, 3, 3)
    state['roi_head.bbox_head.fc_cls.weight'] = torch.randn(2, 1024)
    if edit is not None:
        edit(state)
    meta = {'mmdet_version': '2.19.0', 'CLASSES': ('person',), 'epoch': 12, 'iter': 3000, 'config': 'model = ...'}
    optimizer = {'state': {}, 'param_groups': [{'lr': 0.01, 'momentum': 0.9, 'params': [0, 1]}]}
    torch.save({'meta': meta, 'state_dict': state, 'optimizer': optimizer}, path)
    return path


def test_mmdet_checkpoint_converts_and_loads_through_timm(backbone, tmp_path):
    dst = tmp_path / 'bh50_in1k.safetensors'
    report = convert_checkpoint('bh_resnet50', mmdet_checkpoint(backbone, tmp_path / 'bh50_in1k.pth'), dst)
    assert report.dropped == {'neck': 2, 'roi_head': 1, 'rpn_head': 1}
    assert report.ignored == ['meta', 'optimizer'] and report.meta['mmdet_version'] == '2.19.0'
    assert (report.num_classes, report.in_chans, report.params) == (0, 3, 10_948_160)
    text = '\n'.join(report.lines())
    assert 'dropped: 4 non-backbone keys: neck (2), roi_head (1), rpn_head (1)' in text
    assert f"pretrained_cfg_overlay=dict(file='{dst}')" in text
    overlay = dict(file=str(dst))
    with pytest.warns(UserWarning, match=r'no classifier \(fc\.bias, fc\.weight\)'):
        classifier = timm.create_model('bh_resnet50', pretrained=True, pretrained_cfg_overlay=overlay).eval()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        features = timm.create_model('bh_resnet50', pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    with torch.no_grad():
        torch.testing.assert_close(classifier.forward_features(X), backbone.forward_features(X), rtol=0, atol=0)
        expected = backbone.forward_intermediates(X, intermediates_only=True)
        for got, want in zip(features.eval()(X), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_plain_state_dict_with_classifier_and_prefixes(tmp_path):
    source = timm.create_model('bh_resnet50', num_classes=7, in_chans=1).eval()
    src = tmp_path / 'plain.pth'
    torch.save({'module.' + k: v for k, v in source.state_dict().items()}, src)  # as saved from DDP
    report = convert_checkpoint('bh_resnet50', src, tmp_path / 'plain.safetensors')
    assert (report.num_classes, report.in_chans, report.dropped, report.layout) == (7, 1, {}, 'a plain state dict')
    overlay = dict(file=str(report.dst), num_classes=7, input_size=(1, 224, 224))
    assert f'pretrained_cfg_overlay=dict({", ".join(f"{k}={v!r}" for k, v in overlay.items())})' in report.lines()[-1]
    model = timm.create_model('bh_resnet50', pretrained=True, pretrained_cfg_overlay=overlay)
    state = model.state_dict()
    assert (model.num_classes, model.conv1.in_channels) == (7, 1)
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())


def _drop(key):
    return lambda state: state.pop(key)


def _reshape(key):
    return lambda state: state.__setitem__(key, torch.zeros(3))


def _extra(key):
    return lambda state: state.__setitem__(key, torch.zeros(3))


REFUSED = {
    'missing': (_drop('backbone.layer2.3.conv2.weight'), r'1 backbone key\(s\) missing: layer2\.3\.conv2\.weight'),
    'mis-shaped': (
        _reshape('backbone.bn1.bias'),
        r'1 key\(s\) with another shape: bn1\.bias: source \(3,\), bh_resnet50 \(64,\)',
    ),
    'unexpected': (_extra('backbone.layer5.0.weight'), r'1 key\(s\) bh_resnet50 does not have: layer5\.0\.weight'),
}


@pytest.mark.parametrize('case', list(REFUSED), ids=list(REFUSED))
def test_incomplete_or_foreign_backbones_are_refused_with_the_list(backbone, tmp_path, case):
    edit, message = REFUSED[case]
    src = mmdet_checkpoint(backbone, tmp_path / 'ckpt.pth', edit)
    with pytest.raises(ConversionError, match=f'not a complete bh_resnet50 backbone: {message}.*Nothing was written'):
        convert_checkpoint('bh_resnet50', src, tmp_path / 'out.safetensors')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt.pth']  # no output, no partial file


class _Touch:
    """Unpickling this would create a file: ``weights_only=True`` must refuse it without running it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickles_are_opened_with_weights_only(backbone, tmp_path):
    marker = tmp_path / 'code-was-run'
    src = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1)}, 'meta': {'hook': _Touch(marker)}}, src)
    with pytest.raises(ConversionError, match=r'needs Python objects .*pathlib.*weights_only=True'):
        convert_checkpoint('bh_resnet50', src, tmp_path / 'out.safetensors')
    assert not marker.exists()


def test_truncated_or_foreign_files_are_clear_errors(backbone, tmp_path):
    src = mmdet_checkpoint(backbone, tmp_path / 'ckpt.pth')
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r'not a readable PyTorch checkpoint \(truncated or corrupt\?\)'):
        convert_checkpoint('bh_resnet50', src, tmp_path / 'out.safetensors')
    torch.save({'weights': [1, 2]}, tmp_path / 'other.pth')
    with pytest.raises(ConversionError, match=r"has no state dict: .* top-level entries: \{'weights': 'list'\}"):
        convert_checkpoint('bh_resnet50', tmp_path / 'other.pth', tmp_path / 'out.safetensors')
    with pytest.raises(ConversionError, match=r'must end in \.safetensors'):
        convert_checkpoint('bh_resnet50', tmp_path / 'other.pth', tmp_path / 'out.pth')


def test_an_unconverted_checkpoint_given_to_timm_points_at_convert(backbone, tmp_path):
    src = mmdet_checkpoint(backbone, tmp_path / 'bh50_in1k.pth')
    with pytest.raises(WeightFileError, match=r"keys start with 'backbone\.'.*bh-models convert --model bh_resnet50"):
        timm.create_model('bh_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(src)))


def test_cli_convert(backbone, tmp_path, capsys):
    src = mmdet_checkpoint(backbone, tmp_path / 'bh50_in1k.pth')
    dst = tmp_path / 'bh50_in1k.safetensors'
    assert cli.main(['convert', '--model', 'bh_resnet50', str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f'converted {src} -> {dst}' in out and 'dropped: 4 non-backbone keys' in out
    assert cli.main(['convert', '--model', 'bh_resnet50', str(src), str(dst)]) == 1
    assert 'exists; choose another name or pass --force' in capsys.readouterr().err
    assert cli.main(['convert', '--model', 'bh_resnet50', str(src), str(dst), '--force']) == 0
