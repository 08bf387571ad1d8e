"""Export -> a real Hugging Face cache layout -> every loading route, offline; publish's dry run; offline errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from huggingface_hub import ModelCard

import bh_models
from bh_models import cli, weights
from bh_models.hub import EXPORT_FILES, WeightsUnavailableError, export_folder, publish_folder
from bh_models.weights import WeightFileError, make_card, save_weights, write_card

REPO = Path(__file__).resolve().parents[1]
ORG = 'test-org'
NAME = 'bh_resnet50.fmnist'
REPO_ID = f'{ORG}/{NAME}'
X1 = torch.randn(1, 1, 64, 64)


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No network: sockets refuse to connect; huggingface_hub is offline with an empty HF_HOME and no token."""

    def refuse(*args, **kwargs):
        raise OSError('tests must not use the network')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    hf_home = tmp_path / 'hf_home'
    # what HF_HOME=<hf_home> HF_HUB_OFFLINE=1 give a fresh process (huggingface_hub reads them at import)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HOME', str(hf_home))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(hf_home / 'hub'))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_TOKEN_PATH', str(hf_home / 'token'))
    for var in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_OIDC_RESOURCE'):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope='module')
def artifact(tmp_path_factory) -> tuple[torch.nn.Module, Path, Path]:
    """Built once: a 10-class 1-channel bh_resnet50, a weights dir with its file and card, and its export."""
    root = tmp_path_factory.mktemp('artifact')
    directory = root / 'weights'
    source = timm.create_model('bh_resnet50', num_classes=10, in_chans=1).eval()
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    path = save_weights(source, directory / f'{NAME}.safetensors')
    card = make_card(
        NAME,
        path,
        dataset='Fashion-MNIST',
        dataset_hub_id='zalando-datasets/fashion_mnist',
        input_size=(1, 28, 28),
        mean=[0.286],
        std=[0.353],
        recipe='bh-models train --model bh_resnet50 --data fashion-mnist',
        metrics={'top1': 91.25, 'top5': 99.5},
        eval_split='test',
        license='apache-2.0',
        description='BH-ResNet50 trained on Fashion-MNIST (a test weight).',
    )
    write_card(card, directory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('BH_MODELS_WEIGHTS_DIR', str(directory))
        mp.setenv('BH_MODELS_HUB_ORG', ORG)
        bh_models.reload_cards()
        try:
            folder = export_folder(NAME, root / 'export')
        finally:
            mp.undo()
            bh_models.reload_cards()
    return source, directory, folder


@pytest.fixture
def published(artifact, tmp_path, monkeypatch):
    """A copy of the artifact: card + file in a temp weights dir (registered), and the exported folder."""
    source, directory, folder = artifact
    monkeypatch.setenv('BH_MODELS_WEIGHTS_DIR', str(shutil.copytree(directory, tmp_path / 'weights')))
    monkeypatch.setenv('BH_MODELS_HUB_ORG', ORG)
    bh_models.reload_cards()
    yield source, weights.get_card(NAME), shutil.copytree(folder, tmp_path / 'export')
    monkeypatch.undo()
    bh_models.reload_cards()


def hf_cache_from_folder(folder: Path, cache: Path, repo_id: str) -> Path:
    """Lay ``folder`` out as huggingface_hub's cache holds a downloaded repo: blobs, refs/main, snapshots/<rev>."""
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    snapshot = repo / 'snapshots' / revision
    snapshot.mkdir(parents=True)
    (repo / 'blobs').mkdir()
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)
    for path in folder.iterdir():
        data = path.read_bytes()
        blob = repo / 'blobs' / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def move_local_weights_to_hub_cache(card, folder: Path) -> Path:
    """Only the card stays in the weights dir; the file is in the Hub cache, as for a user without a checkout."""
    (weights.cards_dir() / card.filename).unlink()
    return hf_cache_from_folder(folder, Path(huggingface_hub.constants.HF_HUB_CACHE), REPO_ID)


def outputs_equal(model: torch.nn.Module, source: torch.nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(X1), source(X1), rtol=0, atol=0)


def same_weights(model: torch.nn.Module, source: torch.nn.Module) -> bool:
    got, want = model.state_dict(), source.state_dict()
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


# --- export -----------------------------------------------------------------------------------------------


def test_export_writes_what_timm_expects(published):
    _, card, folder = published
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPORT_FILES)
    assert weights.sha256_file(folder / 'model.safetensors') == card.sha256
    config = json.loads((folder / 'config.json').read_text())
    assert (config['architecture'], config['num_classes']) == ('bh_resnet50', 10)
    assert config['model_args'] == {'num_classes': 10, 'in_chans': 1, 'global_pool': 'avg'}
    cfg = config['pretrained_cfg']
    assert (cfg['input_size'], cfg['mean'], cfg['std'], cfg['crop_pct']) == ([1, 28, 28], [0.286], [0.353], 1.0)
    assert not {'file', 'hf_hub_id', 'source', 'url'} & cfg.keys()
    assert config['bh_models']['sha256'] == card.sha256 and config['bh_models']['card'] == card.to_dict()
    meta = ModelCard.load(folder / 'README.md').data
    assert (meta.library_name, meta.license, meta.pipeline_tag) == ('timm', 'apache-2.0', 'image-classification')
    assert meta.datasets == ['zalando-datasets/fashion_mnist'] and meta.metrics == ['accuracy']
    assert {'timm', 'bh-models', 'image-classification'} <= set(meta.tags)
    assert meta.eval_results[0].metric_value == 91.25 and meta.eval_results[0].dataset_name == 'Fashion-MNIST'
    text = (folder / 'README.md').read_text()
    assert 'import bh_models' in text and f"timm.create_model('hf-hub:{REPO_ID}', pretrained=True)" in text
    assert card.sha256 in text and 'arXiv:2303.11267' in text


def test_export_refuses_to_overwrite_and_names_the_fix(published, tmp_path):
    with pytest.raises(FileExistsError, match='not empty; choose another folder or pass overwrite'):
        export_folder(NAME, published[2])
    with pytest.raises(ValueError, match=r"no weight card for 'bh_resnet50.nope' .* --weights FILE"):
        export_folder('bh_resnet50.nope', tmp_path / 'x')
    with pytest.raises(ValueError, match='the Hub gets safetensors only. Convert it first'):
        export_folder('bh_resnet50', tmp_path / 'x', weights=tmp_path / 'model.pth')


# --- every route, offline ---------------------------------------------------------------------------------


def test_local_dir_route_round_trip(published):
    source, _, folder = published
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert (model.num_classes, model.conv1.in_channels) == (10, 1)
    outputs_equal(model, source)


def test_tag_and_hf_hub_routes_from_the_hub_cache_offline(published):
    source, card, folder = published
    snapshot = move_local_weights_to_hub_cache(card, folder)
    tagged = timm.create_model(NAME, pretrained=True)
    assert tagged.pretrained_cfg['file'] == str(snapshot / 'model.safetensors')
    assert same_weights(tagged, source)
    hub = timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True)
    assert hub.pretrained_cfg['file'] == str(snapshot / 'model.safetensors')
    assert same_weights(hub, source)
    features = timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True, features_only=True, out_indices=(0, 1))
    assert [f.shape[1] for f in features(X1)] == [64, 256]


def test_torch_hub_route(published):
    source, card, folder = published
    move_local_weights_to_hub_cache(card, folder)
    model = torch.hub.load(str(REPO), 'bh_resnet50', source='local', pretrained=True, pretrained_cfg='fmnist')
    assert same_weights(model, source)


def test_corrupt_file_in_the_hub_cache_is_a_clear_error(published):
    _, card, folder = published
    snapshot = move_local_weights_to_hub_cache(card, folder)
    blob = (snapshot / 'model.safetensors').resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    for name in (NAME, f'hf-hub:{REPO_ID}'):
        with pytest.raises(WeightFileError, match=rf'{snapshot}/model.safetensors has sha256 .* Delete .*models--'):
            timm.create_model(name, pretrained=True)


def test_offline_without_the_file_names_repo_cache_and_three_ways(published):
    _, card, _ = published
    (weights.cards_dir() / card.filename).unlink()
    with pytest.raises(WeightsUnavailableError) as info:
        timm.create_model(NAME, pretrained=True)
    message = str(info.value)
    cache = Path(huggingface_hub.constants.HF_HUB_CACHE) / f'models--{ORG}--{NAME}'
    for part in (
        f'{NAME}: model.safetensors is not in the Hub cache and HF_HUB_OFFLINE=1 is set',
        f'Hub repo:   {REPO_ID}',
        f'Hub cache:  {cache}',
        str(weights.cards_dir() / card.filename),
        f'1. fill the Hub cache once, online: `hf download {REPO_ID}`',
        f'2. put the file in the weights directory (BH_MODELS_WEIGHTS_DIR): save model.safetensors of {REPO_ID} as',
        f'sha256 {card.sha256}',
        "3. point at a copy of the file: timm.create_model('bh_resnet50.fmnist', pretrained=True, ",
    ):
        assert part in message, part


def test_settings_in_a_fresh_process(published, tmp_path):
    """The documented environment settings, as a user sets them: HF_HOME, HF_HUB_OFFLINE, BH_MODELS_*."""
    source, card, folder = published
    hf_home = tmp_path / 'fresh_hf_home'
    hf_cache_from_folder(folder, hf_home / 'hub', REPO_ID)
    (weights.cards_dir() / card.filename).unlink()
    torch.save(source(X1).detach(), tmp_path / 'expected.pt')
    torch.save(X1, tmp_path / 'x.pt')
    script = textwrap.dedent(f"""
        import torch, timm, bh_models
        x, expected = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'expected.pt')!r})
        for name in ({NAME!r}, {'hf-hub:' + REPO_ID!r}):
            model = timm.create_model(name, pretrained=True).eval()
            with torch.no_grad():
                assert torch.equal(model(x), expected), name
        print(timm.list_pretrained('bh_*'), timm.get_pretrained_cfg({NAME!r}).hf_hub_id)
    """)
    env = {
        **os.environ,
        'HF_HOME': str(hf_home),
        'HF_HUB_OFFLINE': '1',
        'BH_MODELS_WEIGHTS_DIR': str(weights.cards_dir()),
        'BH_MODELS_HUB_ORG': ORG,
    }
    done = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"['{NAME}'] {REPO_ID}"


# --- exporting a file without a card (what a training run or `bh-models convert` produces) -----------------


def test_export_a_backbone_file_without_card(tmp_path):
    backbone = timm.create_model('bh_resnet50', num_classes=0).eval()
    path = save_weights(backbone, tmp_path / 'backbone.safetensors')
    folder = export_folder('bh_resnet50', tmp_path / 'export', weights=path)
    config = json.loads((folder / 'config.json').read_text())
    assert config['num_classes'] == 0 and config['bh_models']['card'] is None
    assert ModelCard.load(folder / 'README.md').data.library_name == 'timm'
    model = timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=5)  # a new 5-class classifier
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(model.eval().forward_features(x), backbone.forward_features(x), rtol=0, atol=0)
    partial = tmp_path / 'partial.safetensors'
    from safetensors.torch import save_file

    save_file({k: v for k, v in backbone.state_dict().items() if k != 'layer4.0.conv1.weight'}, str(partial))
    with pytest.raises(WeightFileError, match=r"missing \['layer4.0.conv1.weight'\].*Only complete weights"):
        export_folder('bh_resnet50', tmp_path / 'export2', weights=partial)


def test_export_with_a_card_that_is_not_registered(artifact, tmp_path, monkeypatch):
    """What a training run does before its card is in weights/: export the file with the card object."""
    _, directory, _ = artifact
    card = weights.read_card(directory / f'{NAME}.json')
    (tmp_path / 'no_cards').mkdir()
    try:
        with monkeypatch.context() as m:  # a weights directory without the shipped card of this name
            m.setenv('BH_MODELS_WEIGHTS_DIR', str(tmp_path / 'no_cards'))
            bh_models.reload_cards()
            assert weights.get_card(NAME) is None
            folder = export_folder('bh_resnet50', tmp_path / 'export', weights=directory / card.filename, card=card)
    finally:
        bh_models.reload_cards()
    config = json.loads((folder / 'config.json').read_text())
    assert config['pretrained_cfg']['mean'] == [0.286] and config['pretrained_cfg']['tag'] == 'fmnist'
    assert config['bh_models']['card'] == card.to_dict() and config['num_classes'] == 10
    assert ModelCard.load(folder / 'README.md').data.eval_results[0].metric_value == 91.25


# --- publish ------------------------------------------------------------------------------------------------


def test_publish_dry_run_prints_the_plan_and_contacts_nobody(published, capsys):
    _, card, folder = published
    assert publish_folder(folder, REPO_ID, dry_run=True) == ''
    out = capsys.readouterr().out
    assert f'dry run: would push {folder} to https://huggingface.co/{REPO_ID}' in out
    for name in EXPORT_FILES:
        assert name in out
    assert f'sha256 {card.sha256}' in out and 'dry run: nothing was uploaded.' in out
    assert 'token: none (set HF_TOKEN' in out
    publish_folder(folder, f'{ORG}/another-name', dry_run=True)
    assert f'the card of {NAME} points at {REPO_ID}' in capsys.readouterr().out


def test_publish_checks_the_folder_and_the_token(published, tmp_path):
    _, _, folder = published
    with pytest.raises(PermissionError, match='no Hugging Face token .* set HF_TOKEN'):
        publish_folder(folder, REPO_ID)
    with pytest.raises(ValueError, match='give the full repo id'):
        publish_folder(folder, NAME, dry_run=True)
    (folder / 'notes.txt').write_text('stray')
    with pytest.raises(ValueError, match=r"must hold exactly .* unexpected \['notes.txt'\]"):
        publish_folder(folder, REPO_ID, dry_run=True)
    (folder / 'notes.txt').unlink()
    with open(folder / 'model.safetensors', 'r+b') as f:
        f.truncate(1000)
    with pytest.raises(WeightFileError, match='is 1000 bytes but .* truncated'):
        publish_folder(folder, REPO_ID, dry_run=True)


def test_cli_export_and_publish(published, tmp_path, capsys):
    out = tmp_path / 'cli_export'
    assert cli.main(['export', '--model', NAME, str(out)]) == 0
    printed = capsys.readouterr().out
    assert f'exported {NAME} to {out}' in printed and f'local-dir:{out.resolve()}' in printed
    assert cli.main(['publish', str(out), '--repo-id', REPO_ID, '--dry-run']) == 0
    assert 'dry run: nothing was uploaded.' in capsys.readouterr().out
    assert cli.main(['export', '--model', NAME, str(out)]) == 1
    assert 'pass overwrite (--force)' in capsys.readouterr().err
