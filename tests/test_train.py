"""`bh-models train` / `evaluate` and the pre-training comparison, on small Fashion-MNIST-format files (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import timm
import torch
from data_files import write_cifar100, write_fmnist
from safetensors.torch import load_file

import bh_models
from bh_models import train as train_mod
from bh_models.evaluate import evaluate_pretrained
from bh_models.weights import read_card, sha256_file

REPO = Path(__file__).resolve().parents[1]
FAST = ['--batch-size', '16', '--workers', '0', '--quiet']


@pytest.fixture(scope='module')
def fmnist(tmp_path_factory) -> Path:
    return write_fmnist(tmp_path_factory.mktemp('fmnist'), n_train=64, n_test=32)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))


def _argv(fmnist: Path, out: Path, *extra: str, model: str = 'bh_resnet50') -> list[str]:
    return ['--model', model, '--data', 'fmnist', '--data-dir', str(fmnist), '--output', str(out), *extra]


def _train(fmnist: Path, out: Path, *extra: str, model: str = 'bh_resnet50') -> dict:
    assert train_mod.main(_argv(fmnist, out, *FAST, *extra, model=model)) == 0
    return json.loads((out / 'final.json').read_text())


def test_train_checkpoints_every_epoch_and_resumes(fmnist, tmp_path, capsys):
    out = tmp_path / 'run'
    first = _train(fmnist, out, '--epochs', '1')
    assert first['epochs'] == 1 and first['val_images'] == 32 and first['img_size'] == 32
    assert 0 <= first['top1'] <= 100 and first['top5'] >= first['top1']
    state = torch.load(out / train_mod.CHECKPOINT_STATE, weights_only=True)  # no pickled code in the state
    assert state['epoch'] == 0 and {'optimizer', 'scheduler', 'rng'} <= set(state)
    weights = load_file(str(out / train_mod.CHECKPOINT))
    assert weights['conv1.weight'].shape == (64, 1, 3, 3) and weights['fc.weight'].shape[0] == 10

    resumed = _train(fmnist, out, '--epochs', '2', '--resume')
    assert 'resumed from' in capsys.readouterr().out
    assert [row['epoch'] for row in resumed['history']] == [1, 2]
    assert resumed['history'][0] == first['history'][0]  # epoch 1 was not trained again


def test_time_budget_fixes_the_epoch_count_after_the_first_epoch():
    args = Namespace(time_budget_s=100.0, eval_every=5)
    first = {'train_s': 10.0, 'eval_s': 1.0}
    # 100 s - 12 s elapsed - 3 s reserved for the final evaluations - 5 s = 80 s left at 10.2 s/epoch: 1 + 7
    assert train_mod._epochs_within_budget(args, 12.0, first, planned=30) == 8
    assert train_mod._epochs_within_budget(args, 12.0, first, planned=4) == 4
    assert train_mod._epochs_within_budget(args, 500.0, first, planned=30) == 1


def test_export_writes_a_card_that_timm_loads_and_evaluate_reproduces(fmnist, tmp_path, monkeypatch):
    weights_dir = tmp_path / 'weights'
    final = _train(
        fmnist,
        tmp_path / 'run',
        '--epochs',
        '1',
        '--export',
        'bh_resnet50.fmnist',
        '--export-dir',
        str(weights_dir),
        '--recipe-note',
        'unit test:',
    )
    export = final['export']
    card = read_card(export['card'])
    assert card.sha256 == sha256_file(export['weights']) and card.input_size == (1, 32, 32)
    assert card.recipe.startswith('unit test: bh-models train --model bh_resnet50')
    assert card.recipe.count('unit test:') == 1  # the note is not repeated inside the recorded command
    assert card.crop_pct == 1.0 and card.label_names[9] == 'Ankle boot' and card.num_classes == 10
    stored = load_file(export['weights'])
    assert stored['conv1.weight'].dtype == (torch.float16 if export['dtype'] == 'float16' else torch.float32)

    monkeypatch.setenv('BH_MODELS_WEIGHTS_DIR', str(weights_dir))
    bh_models.reload_cards()
    try:
        model = timm.create_model('bh_resnet50.fmnist', pretrained=True)  # in_chans 1 and 10 classes from the card
        assert model.conv1.in_channels == 1 and model.num_classes == 10
        result = evaluate_pretrained('bh_resnet50.fmnist', 'fmnist', str(fmnist), workers=0)
        assert result['images'] == 32 and result['data_config']['input_size'] == [1, 32, 32]
        assert result['top1'] == pytest.approx(card.metrics['top1'], abs=0.01)
    finally:
        monkeypatch.undo()
        bh_models.reload_cards()


def test_a_timm_model_on_cifar100(tmp_path):
    root = write_cifar100(tmp_path / 'c100', n_train=32, n_test=16)
    out = tmp_path / 'run'
    argv = [
        '--model',
        'resnet18',
        '--data',
        'cifar100',
        '--data-dir',
        str(root),
        '--output',
        str(out),
        '--epochs',
        '1',
        '--mixup',
        '0.2',
        '--cutmix',
        '1.0',
        *FAST,
    ]
    assert train_mod.main(argv) == 0
    final = json.loads((out / 'final.json').read_text())
    assert final['val_images'] == 16 and final['model'] == 'resnet18'


def test_bad_export_name_is_refused(fmnist, tmp_path):
    with pytest.raises(SystemExit, match='use bh_resnet50.<tag>'):
        train_mod.main(_argv(fmnist, tmp_path, '--export', 'resnet50.fmnist'))


def test_torchrun_two_processes_with_gloo(fmnist, tmp_path):
    """DistributedDataParallel + DistributedSampler on CPU: each process half the batch, replicas stay equal."""
    out = tmp_path / 'ddp'
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    export = ['--export', 'bh_resnet50.fmnist', '--export-dir', str(tmp_path / 'weights')]  # rank 0 writes
    cmd = [*torchrun, '-m', 'bh_models.cli', 'train', *_argv(fmnist, out, '--epochs', '1', *FAST, *export)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    final = json.loads((out / 'final.json').read_text())
    assert final['world_size'] == 2 and final['replicas_equal'] is True
    assert final['val_images'] == 32  # each test image evaluated exactly once across the two processes
    assert final['command'].startswith('torchrun --nproc_per_node 2')
    assert '2 process(es) x batch 8' in proc.stdout
    assert final['export']['top1_fp32'] == final['top1']
    assert (tmp_path / 'weights' / 'bh_resnet50.fmnist.json').is_file()


def test_pretrain_comparison_writes_the_table(fmnist, tmp_path):
    from benchmarks import pretrain_fmnist

    results = tmp_path / 'results'
    rc = pretrain_fmnist.main(
        [
            '--data-dir',
            str(fmnist),
            '--models',
            'bh_resnet50,resnet18',
            '--seeds',
            '0,1',
            '--epochs',
            '1',
            '--parallel',
            '2',
            '--threads',
            '1',
            '--work-dir',
            str(tmp_path / 'runs'),
            '--results-dir',
            str(results),
            '--train-args',
            '--batch-size 16 --workers 0 --max-steps 2',
        ]
    )
    assert rc == 0
    report = json.loads((results / 'pretrain_fmnist.json').read_text())
    assert [len(report['results'][m]['runs']) for m in ('bh_resnet50', 'resnet18')] == [2, 2]
    assert report['difference'] is not None and report['returncodes'] == [0, 0, 0, 0]
    md = (results / 'pretrain_fmnist.md').read_text()
    assert '| bh_resnet50 | 2 |' in md and 'bh-models train --model resnet18' in md


def test_the_probe_plan_sums_waves_of_their_slowest_run():
    from benchmarks.pretrain_fmnist import plan_epochs

    img_s = {'bh': 100.0, 'std': 200.0}  # an epoch of 1000 images: 10 s and 5 s
    eval_s = {'bh': 2.0, 'std': 1.0}
    planned = ['bh', 'bh', 'std', 'std']
    # one after another, 3 epochs with an evaluation every 2: (30 + 2 * 2) * 2 + (15 + 2 * 1) * 2 = 102 s
    epochs, plan = plan_epochs(planned, img_s, eval_s, 1, 2, 1.0, 102, 60, train_images=1000)
    assert (epochs, plan['plan_s'], plan['waves']) == (3, 102.0, 4)
    # two side by side, waves (bh, bh) and (std, std): 34 + 17 = 51 s for 3 epochs, 4 epochs need (40 + 4) + (20 + 2)
    epochs, plan = plan_epochs(planned, img_s, eval_s, 2, 2, 1.0, 65.9, 60, train_images=1000)
    assert (epochs, plan['plan_s'], plan['waves']) == (3, 51.0, 2)
    assert plan_epochs(planned, img_s, eval_s, 2, 2, 1.0, 66, 60, train_images=1000)[0] == 4
    assert plan_epochs(planned, img_s, eval_s, 2, 2, 1.3, 66, 60, train_images=1000)[0] == 2  # the margin
    assert plan_epochs(planned, img_s, eval_s, 1, 2, 1.0, 1e9, 7, train_images=1000)[0] == 7  # capped
    assert plan_epochs(planned, img_s, eval_s, 1, 2, 1.0, 1, 60, train_images=1000)[0] == 1  # at least one
