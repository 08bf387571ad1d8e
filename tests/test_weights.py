"""Weight cards -> timm tags, the local-file route, file checks and the state-dict guard (offline, real libraries)."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import bh_models
from bh_models import weights
from bh_models.weights import CardError, WeightFileError, make_card, save_weights, write_card

REPO = Path(__file__).resolve().parents[1]
MODELS = timm.list_models('bh_*')
FMNIST = dict(
    dataset='Fashion-MNIST',
    dataset_hub_id='zalando-datasets/fashion_mnist',
    input_size=(1, 28, 28),
    mean=[0.286],
    std=[0.353],
    recipe='bh-models train --model bh_resnet50 --data fashion-mnist --epochs 1',
    metrics={'top1': 91.25},
    eval_split='test (10,000 images)',
    license='apache-2.0',
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network: sockets refuse to connect and huggingface_hub is in offline mode."""

    def refuse(*args, **kwargs):
        raise OSError('tests must not use the network')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)


@pytest.fixture
def weights_home(tmp_path, monkeypatch):
    """An empty weights directory (BH_MODELS_WEIGHTS_DIR) and Hub org; the real registry is restored afterwards."""
    directory = tmp_path / 'weights'
    directory.mkdir()
    monkeypatch.setenv('BH_MODELS_WEIGHTS_DIR', str(directory))
    monkeypatch.setenv('BH_MODELS_HUB_ORG', 'test-org')
    bh_models.reload_cards()
    yield directory
    monkeypatch.undo()
    bh_models.reload_cards()


def publish_locally(model: torch.nn.Module, name: str, directory: Path, **card) -> weights.WeightCard:
    """Save ``model`` as ``<name>.safetensors`` with a card in ``directory`` and register it."""
    path = save_weights(model, directory / f'{name}.safetensors')
    written = write_card(make_card(name, path, **{**FMNIST, **card}), directory)
    bh_models.reload_cards()
    return weights.read_card(written)


def fmnist_resnet() -> torch.nn.Module:
    model = timm.create_model('bh_resnet50', num_classes=10, in_chans=1).eval()
    for m in model.modules():  # non-trivial BN statistics, so a load that skipped them would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def assert_same_weights(model: torch.nn.Module, source: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Every tensor of ``model`` equals ``source``'s (what loading is about; cheaper than forward passes)."""
    got, want = model.state_dict(), source.state_dict()
    keys = [k for k in got if not k.startswith(skip)]
    assert keys and all(torch.equal(got[k], want[k]) for k in keys), [
        k for k in keys if not torch.equal(got[k], want[k])
    ]


# --- the registry -----------------------------------------------------------------------------------------


def test_no_cards_leaves_the_registry_as_it_was(weights_home):
    assert bh_models.reload_cards() == {}
    assert timm.list_pretrained('bh_*') == []
    assert timm.list_models('bh_*', include_tags=True) == MODELS
    for name in MODELS:
        cfg = timm.get_pretrained_cfg(name)
        assert not cfg.has_weights and cfg.tag is None
        with pytest.raises(RuntimeError, match='no pretrained weights are registered'):
            timm.create_model(name, pretrained=True)


def test_a_card_becomes_a_tag_with_its_cfg(weights_home):
    card = publish_locally(fmnist_resnet(), 'bh_resnet50.fmnist', weights_home)
    assert timm.list_pretrained('bh_*') == ['bh_resnet50.fmnist'] == bh_models.list_models(pretrained=True)
    cfg = timm.get_pretrained_cfg('bh_resnet50.fmnist')
    assert cfg.hf_hub_id == 'test-org/bh_resnet50.fmnist' == card.hf_hub_id
    assert (cfg.num_classes, cfg.input_size, cfg.mean, cfg.std) == (10, (1, 28, 28), (0.286,), (0.353,))
    assert (cfg.interpolation, cfg.crop_pct, cfg.license, cfg.pool_size) == ('bilinear', 1.0, 'apache-2.0', (1, 1))
    assert f'sha256: {card.sha256}' in cfg.notes
    # the untagged name keeps its meaning: adding a card does not turn bh_resnet50 into a 10-class 1-channel model
    assert timm.create_model('bh_resnet50').num_classes == 1000
    with pytest.raises(RuntimeError, match=r'no pretrained weights .* Tags with weights: bh_resnet50\.fmnist'):
        timm.create_model('bh_resnet50', pretrained=True)
    assert timm.create_model('bh_resnet50.fmnist').num_classes == 10  # the tag's cfg, without weights


def test_a_default_card_is_what_the_untagged_name_means(weights_home):
    publish_locally(fmnist_resnet(), 'bh_resnet50.fmnist', weights_home, default=True)
    assert timm.is_model_pretrained('bh_resnet50')
    model = timm.create_model('bh_resnet50', pretrained=True).eval()
    assert model.num_classes == 10 and model.pretrained_cfg['tag'] == 'fmnist'


def test_hub_org_is_a_setting(weights_home, monkeypatch):
    publish_locally(fmnist_resnet(), 'bh_resnet50.fmnist', weights_home)
    monkeypatch.setenv('BH_MODELS_HUB_ORG', 'other-org')
    bh_models.reload_cards()
    assert timm.get_pretrained_cfg('bh_resnet50.fmnist').hf_hub_id == 'other-org/bh_resnet50.fmnist'
    card = json.loads((weights_home / 'bh_resnet50.fmnist.json').read_text())
    card['hub_repo'] = 'someone/elsewhere@v1'
    (weights_home / 'bh_resnet50.fmnist.json').write_text(json.dumps(card))
    bh_models.reload_cards()
    assert timm.get_pretrained_cfg('bh_resnet50.fmnist').hf_hub_id == 'someone/elsewhere@v1'


def test_weights_dir_setting_that_does_not_exist_warns(tmp_path, monkeypatch, weights_home):
    monkeypatch.setenv('BH_MODELS_WEIGHTS_DIR', str(tmp_path / 'typo'))
    with pytest.warns(UserWarning, match='is not a directory: no weight cards are registered'):
        assert bh_models.reload_cards() == {}


def _card_data(directory: Path) -> dict:
    path = save_weights(timm.create_model('bh_resnet50', num_classes=10, in_chans=1), directory / 'x.safetensors')
    return make_card('bh_resnet50.fmnist', path, **FMNIST).to_dict()


BAD_CARDS = {
    'unknown field': (lambda d: d | {'top1': 90}, r"unknown field\(s\) \['top1'\]"),
    'missing field': (lambda d: {k: v for k, v in d.items() if k != 'sha256'}, r"missing field\(s\) \['sha256'\]"),
    'bad sha256': (lambda d: d | {'sha256': 'abc'}, '"sha256" must be 64 lowercase hex digits'),
    'mean per channel': (lambda d: d | {'mean': [0.5, 0.5, 0.5]}, '"mean" must be 1 numbers'),
    'no top1': (lambda d: d | {'metrics': {'top5': 99.0}}, '"metrics" must be an object with "top1"'),
    'bad repo': (lambda d: d | {'hub_repo': 'a/b/c'}, '"hub_repo" must be'),
    'name': (lambda d: d | {'name': 'bh_resnet50.other'}, r'"name" is .* name the file bh_resnet50\.other\.json'),
    'unknown model': (lambda d: d | {'name': 'bh_resnet51.fmnist'}, r"model 'bh_resnet51' is not a BH model"),
}


@pytest.mark.parametrize('case', list(BAD_CARDS), ids=list(BAD_CARDS))
def test_bad_cards_are_refused_with_the_file_and_the_fix(weights_home, case):
    mutate, message = BAD_CARDS[case]
    data = mutate(_card_data(weights_home))
    name = 'bh_resnet51.fmnist' if case == 'unknown model' else 'bh_resnet50.fmnist'
    (weights_home / f'{name}.json').write_text(json.dumps(data))
    with pytest.raises(CardError, match=message) as info:
        bh_models.reload_cards()
    assert f'{name}.json' in str(info.value) and 'Fix the card' in str(info.value)
    assert timm.list_pretrained('bh_*') == []  # a refused reload leaves the registry as it was


def test_two_default_cards_and_broken_json_are_refused(weights_home):
    (weights_home / 'bh_resnet50.a.json').write_text('{"name": ')
    with pytest.raises(CardError, match=r'bh_resnet50\.a\.json: not valid JSON'):
        bh_models.reload_cards()
    data = _card_data(weights_home)
    (weights_home / 'bh_resnet50.a.json').write_text(json.dumps(data | {'name': 'bh_resnet50.a', 'default': True}))
    (weights_home / 'bh_resnet50.b.json').write_text(json.dumps(data | {'name': 'bh_resnet50.b', 'default': True}))
    with pytest.raises(CardError, match=r'bh_resnet50\.a is already the default of bh_resnet50'):
        bh_models.reload_cards()


# --- loading a tag from the weights directory -------------------------------------------------------------


@pytest.mark.parametrize('name', MODELS)
def test_tag_loads_the_local_file_through_timm(weights_home, name):
    source = timm.create_model(name, num_classes=10, in_chans=1).eval()
    publish_locally(source, f'{name}.fmnist', weights_home)
    loaded = timm.create_model(f'{name}.fmnist', pretrained=True)
    assert loaded.pretrained_cfg['file'] == str(weights_home / f'{name}.fmnist.safetensors')
    assert_same_weights(loaded, source)


def test_tag_features_only_and_fine_tuning_load_the_backbone(weights_home):
    source = fmnist_resnet()
    publish_locally(source, 'bh_resnet50.fmnist', weights_home)
    features = timm.create_model('bh_resnet50.fmnist', pretrained=True, features_only=True, out_indices=(0, 4))
    finetune = timm.create_model('bh_resnet50.fmnist', pretrained=True, num_classes=3)  # a new classifier
    three = timm.create_model('bh_resnet50.fmnist', pretrained=True, in_chans=3)  # timm adapts conv1
    assert_same_weights(features, source)
    assert features.feature_info.reduction() == [2, 32]
    assert_same_weights(finetune, source, skip=('fc.',))
    assert finetune.fc.out_features == 3
    assert_same_weights(three, source, skip=('conv1.',))
    assert three.conv1.weight.shape[1] == 3


def test_corrupt_or_truncated_local_file_is_a_clear_error(weights_home):
    publish_locally(fmnist_resnet(), 'bh_resnet50.fmnist', weights_home)
    path = weights_home / 'bh_resnet50.fmnist.safetensors'
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped bit deep in a tensor: the header is fine, the sha256 is not
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match=r'local weight file of bh_resnet50\.fmnist .* has sha256 .* Delete it'):
        timm.create_model('bh_resnet50.fmnist', pretrained=True)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(WeightFileError, match=r'bytes but \d+ are recorded: truncated .* Nothing was loaded'):
        timm.create_model('bh_resnet50.fmnist', pretrained=True)


def test_a_truncated_file_given_directly_is_a_clear_error(tmp_path):
    path = save_weights(timm.create_model('bh_resnet50'), tmp_path / 'w.safetensors')
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(WeightFileError, match='not a readable safetensors file .truncated or corrupt'):
        timm.create_model('bh_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    pickle = tmp_path / 'w.pth'
    torch.save(timm.create_model('bh_resnet50').state_dict(), pickle)
    pickle.write_bytes(pickle.read_bytes()[:1000])
    with pytest.raises(WeightFileError, match='not a readable PyTorch checkpoint'):
        timm.create_model('bh_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(pickle)))


# --- the state-dict guard: never a half-loaded model ------------------------------------------------------


def _file_without(tmp_path: Path, drop=(), **replace) -> str:
    state = {k: v for k, v in timm.create_model('bh_resnet50').state_dict().items() if k not in drop}
    path = tmp_path / 'edited.safetensors'
    save_file({**state, **replace}, str(path))
    return str(path)


GUARD = {
    'missing': (dict(drop=('layer4.0.conv2.weight',)), r'1 key\(s\) missing: layer4\.0\.conv2\.weight'),
    'shape': (dict(**{'layer1.0.bn1.weight': torch.ones(3)}), r'layer1\.0\.bn1\.weight: file \(3,\), model \(64,\)'),
    'fc shape': (dict(**{'fc.bias': torch.ones(7)}), r'fc\.bias: file \(7,\), model \(1000,\)'),
    'unexpected': (dict(**{'layer5.weight': torch.ones(1)}), r'1 unexpected key\(s\): layer5\.weight'),
}


@pytest.mark.parametrize('case', list(GUARD), ids=list(GUARD))
def test_guard_refuses_files_that_do_not_fit(tmp_path, case):
    edit, message = GUARD[case]
    path = _file_without(tmp_path, **edit)
    with pytest.raises(WeightFileError, match=f'{message}.*Nothing was loaded'):
        timm.create_model('bh_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    if case != 'fc shape':  # features_only drops the classifier, so only a classifier problem passes there
        with pytest.raises(WeightFileError, match=message):
            timm.create_model(
                'bh_resnet50', pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=path)
            )


def test_guard_reports_a_missing_classifier_and_loads_the_backbone(tmp_path):
    source = timm.create_model('bh_resnet50').eval()
    path = tmp_path / 'backbone.safetensors'
    save_file({k: v for k, v in source.state_dict().items() if not k.startswith('fc.')}, str(path))
    overlay = dict(file=str(path))
    with pytest.warns(UserWarning, match=r'has no classifier \(fc\.bias, fc\.weight\).* keeps its random init'):
        model = timm.create_model('bh_resnet50', pretrained=True, pretrained_cfg_overlay=overlay)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # nothing to report: these models have no use for the classifier
        features = timm.create_model('bh_resnet50', pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
        pooled = timm.create_model('bh_resnet50', pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    assert_same_weights(model, source, skip=('fc.',))
    assert_same_weights(features, source)
    assert_same_weights(pooled, source)
    assert not torch.equal(model.fc.weight, source.fc.weight)


# --- cards are right: recomputed, and documented -----------------------------------------------------------


def test_check_card_recomputes_what_a_card_records(weights_home):
    card = publish_locally(fmnist_resnet(), 'bh_resnet50.fmnist', weights_home)
    assert (card.params_m_backbone, card.gflops_640x512, card.paper_top1) == (10.947, 26.738, None)
    assert weights.check_card(card) == []
    drifted = weights.card_from_dict(card.to_dict() | {'params_m_backbone': 11.0, 'num_classes': 100})
    assert weights.check_card(drifted) == [
        'num_classes: file has 10, card says 100',
        'params_m_backbone: counted 10.947, card says 11.0',
    ]
    assert weights.paper_top1('bh_resnet50', 'CIFAR-100') == 68.57
    assert weights.paper_top1('bh_hrnet_w32', 'ImageNet-1k') == 78.23
    (weights_home / card.filename).write_bytes(b'0' * card.size_bytes)
    assert weights.check_card(card)[0].startswith('sha256: file has ')


SHIPPED = weights.read_cards(weights.DEFAULT_WEIGHTS_DIR)


@pytest.mark.parametrize('name', sorted(SHIPPED))
def test_shipped_cards_match_their_files_and_counts(name):
    """Every card in the repository's weights/ recomputes to what it records (sha256, size, params, GFLOPs)."""
    assert weights.check_card(SHIPPED[name], weights.DEFAULT_WEIGHTS_DIR) == []


FMNIST_DIR = Path('/usr/share/datasets/fashion-mnist')


@pytest.mark.skipif('bh_resnet50.fmnist' not in SHIPPED, reason='no bh_resnet50.fmnist card in weights/')
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason='apt-get install dataset-fashion-mnist')
def test_shipped_fmnist_weight_scores_what_its_card_says(tmp_path, monkeypatch):
    """timm.create_model('bh_resnet50.fmnist', pretrained=True), offline, with timm's eval transform: >= 93.0 %."""
    from bh_models.evaluate import evaluate_pretrained

    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    card = SHIPPED['bh_resnet50.fmnist']
    # workers=0: DataLoader workers hand tensors over a socket, which this module's offline guard refuses
    result = evaluate_pretrained('bh_resnet50.fmnist', 'fmnist', str(FMNIST_DIR), workers=0, device='cpu')
    assert result['images'] == 10000
    assert result['top1'] == pytest.approx(card.metrics['top1'], abs=0.015)
    assert result['top1'] >= 93.0


def test_weights_readme_documents_every_card_field():
    assert weights.card_fields_in((REPO / 'weights' / 'README.md').read_text()) == []


def test_save_weights_round_trip(tmp_path):
    model = timm.create_model('bh_resnet50', num_classes=0)
    state = load_file(str(save_weights(model, tmp_path / 'm.safetensors')))
    assert state.keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match='saved as .safetensors only'):
        save_weights(model, tmp_path / 'm.pth')
