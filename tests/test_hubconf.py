"""hubconf.py: one documented entrypoint per registered model, forwarding to timm."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import timm
import torch

REPO = Path(__file__).resolve().parents[1]


def _hubconf():
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entrypoints(module) -> list[str]:
    # the rule torch.hub.list applies
    return sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith('_'))


def test_entrypoints_are_exactly_the_registered_models():
    assert _entrypoints(_hubconf()) == sorted(timm.list_models('bh_*'))


def test_dependencies_are_importable():
    for dep in _hubconf().dependencies:
        assert importlib.util.find_spec(dep) is not None, dep


@pytest.mark.parametrize('name', timm.list_models('bh_*'))
def test_hub_load_builds_the_timm_model(name):
    hub_module = _hubconf()
    entry = getattr(hub_module, name)
    assert inspect.getdoc(entry), f'{name} entrypoint has no docstring'
    model = torch.hub.load(str(REPO), name, source='local', pretrained=False, num_classes=3, trust_repo=True)
    reference = timm.create_model(name, num_classes=3)
    assert type(model) is type(reference)
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert model.pretrained_cfg['architecture'] == name
    features = torch.hub.load(str(REPO), name, source='local', features_only=True, out_indices=(1, 2))
    assert features.feature_info.reduction() == [4, 8]


def test_hub_load_unknown_model_is_a_clear_error():
    with pytest.raises(RuntimeError, match='Cannot find callable bh_resnet51 in hubconf'):
        torch.hub.load(str(REPO), 'bh_resnet51', source='local')
