"""The MMDetection 3.x configs: each loads with mmengine, imports bh_models itself, and its backbone (built through
mmpretrain's registry, as MMDetection builds ``mmpretrain.TIMMBackbone``) feeds the neck exactly the channels and
strides the config declares. Full detectors need compiled mmcv ops and are not built here (see the README)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch


def _require(module: str):
    """Import an optional test dependency: skipped locally when missing, a failure in CI (which installs it)."""
    if os.environ.get('CI') == 'true':
        return importlib.import_module(module)
    return pytest.importorskip(
        module, reason=f'{module} missing: install the README Quick start test extras (mmengine, mmcv-lite, mmpretrain)'
    )


# mmcv-lite has no compiled ops: its import warns about MultiScaleDeformableAttention, which nothing here uses
pytestmark = pytest.mark.filterwarnings('ignore:Fail to import ``MultiScaleDeformableAttention``:UserWarning')

mmengine_config = _require('mmengine.config')
mmpretrain_registry = _require('mmpretrain.registry')

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'configs' / 'mmdet').glob('faster_rcnn_*.py'))
MODELS = timm.list_models('bh_*')


def _load(path: Path):
    return mmengine_config.Config.fromfile(str(path))


def test_one_config_per_registered_model():
    names = sorted(_load(p).model.backbone.model_name for p in CONFIGS)
    assert names == sorted(MODELS), 'every bh_* model needs a configs/mmdet/faster_rcnn_<model>_... config'


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_backbone_builds_through_mmpretrain_and_feeds_the_declared_neck(path):
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmpretrain.models import TIMMBackbone

    cfg = _load(path)
    model = cfg.model
    assert model.backbone.type == 'mmpretrain.TIMMBackbone'
    # MMDetection resolves a scoped type through the root registry's mmpretrain child: the same class
    assert ROOT_MODELS.get('mmpretrain.TIMMBackbone') is TIMMBackbone
    backbone = mmpretrain_registry.MODELS.build(model.backbone)
    assert isinstance(backbone, TIMMBackbone)
    assert backbone.timm_model.norm_eval is True and backbone.timm_model.frozen_stages == model.backbone.frozen_stages

    declared = list(model.neck.in_channels)
    assert backbone.timm_model.feature_info.channels() == declared
    height, width = 128, 160
    backbone.eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, height, width))
    assert [f.shape[1] for f in feats] == declared, f'{path.name}: backbone channels differ from neck.in_channels'
    strides = [height // f.shape[-2] for f in feats]
    assert strides == [width // f.shape[-1] for f in feats] == [4, 8, 16, 32]
    assert list(model.roi_head.bbox_roi_extractor.featmap_strides) == strides
    anchor = model.rpn_head.anchor_generator
    assert list(anchor.strides) == strides + [64] and model.neck.num_outs == len(anchor.strides)
    assert list(anchor.scales) == [1.5, 2.5, 3.7, 8] and list(anchor.ratios) == [0.4, 0.8, 1.4]
    assert model.data_preprocessor.pad_size_divisor == 32
    assert model.roi_head.bbox_head.num_classes == 1 and cfg.default_scope == 'mmdet'


def test_configs_import_bh_models_through_custom_imports():
    """In a fresh interpreter, loading each config is what registers the bh_* models in timm."""
    script = (
        'import json, sys\n'
        'from mmengine.config import Config\n'
        "before = 'bh_models' in sys.modules\n"
        'seen = []\n'
        'for path in sys.argv[1:]:\n'
        '    cfg = Config.fromfile(path)\n'
        "    seen.append([list(cfg.custom_imports['imports']), cfg.custom_imports['allow_failed_imports']])\n"
        'import timm\n'
        "print(json.dumps(dict(before=before, after='bh_models' in sys.modules, seen=seen, "
        "models=timm.list_models('bh_*'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    run = subprocess.run(
        [sys.executable, '-W', 'ignore', '-c', script, *map(str, CONFIGS)],
        cwd=REPO / 'configs',  # not the repository root: bh_models must come from the installed package
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result['before'] is False and result['after'] is True
    assert all('bh_models' in imports and allow is False for imports, allow in result['seen'])
    assert sorted(result['models']) == sorted(MODELS)
