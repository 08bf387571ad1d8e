"""The speed/memory benchmark (benchmarks/speed.py) and Fig. 2 (benchmarks/fig2.py): files, numbers, dispatch.

No timing is asserted: the benchmark reports ratios, the tests check that it measures and writes them.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch

from benchmarks import fig2, paper_table, speed
from bh_models.complexity import measure

BH_MODELS = timm.list_models('bh_*')


def test_pairs_are_the_table4_pairs():
    pairs = speed.table4_pairs()
    assert [p.models for p in pairs] == [
        {'standard': 'resnet50', 'bh': 'bh_resnet50'},
        {'standard': 'hrnet_w32', 'bh': 'bh_hrnet_w32'},
        {'standard': 'hrnet_w18', 'bh': 'bh_hrnet_w18'},
    ]
    assert all(p.standard.flops_scope == p.bh.flops_scope for p in pairs)


@pytest.mark.parametrize('name', ['resnet50', 'bh_resnet50', 'bh_hrnet_w18'])
def test_stage_flops_add_up_to_the_table4_count(name):
    """Fig. 2 reuses bh_models.complexity: the five stages sum to the trunk's count, exactly."""
    stages = fig2.stage_flops(name, (512, 640))
    assert len(stages) == len(fig2.STAGES) and all(s > 0 for s in stages)
    assert sum(stages) == measure(name, device='meta', scopes=('backbone',)).flops['backbone']


def test_bh_moves_flops_to_the_high_resolution_stages():
    """The paper's Fig. 2: BH-ResNet50 spends far more of its FLOPs in the stem and stage 1 than ResNet50."""
    share = {name: fig2._shares(fig2.stage_flops(name, (512, 640))) for name in ('resnet50', 'bh_resnet50')}
    assert share['bh_resnet50'][0] + share['bh_resnet50'][1] > 2 * (share['resnet50'][0] + share['resnet50'][1])
    assert share['bh_resnet50'][4] < share['resnet50'][4]


@pytest.mark.parametrize('name', ['hrnet_w18', 'bh_hrnet_w18'])
def test_stage_pieces_compose_to_the_trunk(name):
    model = speed._build(name, next(r for r in speed.TABLE4 if r.model == name), torch.device('cpu'))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y = x
        for piece in fig2.stage_pieces(model):
            y = piece(y)
        expected = model(x)
    assert len(y) == len(expected)
    for a, b in zip(y, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """One pair, small input, one round, eager backend, no memory: the whole pipeline in a few seconds."""
    out_dir = tmp_path_factory.mktemp('speed')
    argv = [
        '--models', 'bh_resnet50', '--input-size', '64', '96', '--batch-sizes', '1', '2', '--rounds', '1',
        '--warmup', '0', '--backend', 'eager', '--no-memory', '--out-dir', str(out_dir),
    ]  # fmt: skip
    rc = speed.main(argv)
    return rc, out_dir


def test_tiny_run_writes_json_markdown_and_charts(tiny_run):
    pytest.importorskip('matplotlib')
    rc, out_dir = tiny_run
    assert rc == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [
        'fig2_cpu.png',
        'speed_cpu.json',
        'speed_cpu.md',
        'speed_cpu.png',
    ]
    report = json.loads((out_dir / 'speed_cpu.json').read_text())
    for key in ('device', 'threads', 'versions', 'load_avg_1_5_15', 'command', 'cpu', 'precision'):
        assert report[key], key
    assert report['command'].startswith('bh-models benchmark --speed --models bh_resnet50')
    (entry,) = report['pairs']
    assert entry['models'] == {'standard': 'resnet50', 'bh': 'bh_resnet50'}
    assert [(r['batch'], r['variant']) for r in entry['latency']] == [
        (b, v) for b in (1, 2) for v in ('eager_nchw', 'eager_cl', 'optimized')
    ]
    for row in entry['latency']:
        assert row['ratio'] == pytest.approx(row['bh_ms'] / row['standard_ms'])
        assert row['bh_img_s'] == pytest.approx(row['batch'] * 1e3 / row['bh_ms'])
    assert entry['optimized']['1']['bh']['backend'] == 'eager'
    assert entry['optimized']['1']['bh']['folded_bn'] == 53
    stages = entry['stages']
    assert len(stages['bh']['flops']) == len(stages['bh']['latency_ms']) == 5
    assert {t['target'].split(' ')[0] for t in report['targets']} == {'BH-ResNet50', 'optimized'}
    md = (out_dir / 'speed_cpu.md').read_text()
    assert '| BH-ResNet50 / ResNet50 | 1 | optimized |' in md and report['device'] in md


def test_speed_dispatch_from_the_table4_command(capsys):
    """``bh-models benchmark --speed`` runs this benchmark (its own options and help)."""
    with pytest.raises(SystemExit) as exc:
        paper_table.main(['--speed', '--help'])
    assert exc.value.code == 0
    out = ' '.join(capsys.readouterr().out.split())
    assert out.startswith('usage: bh-models benchmark --speed') and '--quick' in out


def test_bad_options_name_the_fix(capsys):
    with pytest.raises(SystemExit):
        speed.main(['--models', 'bh_resnet5'])
    assert 'invalid choice' in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            speed.main(['--device', 'cuda'])
        assert 'torch.cuda.is_available() is False' in capsys.readouterr().err


def _saved_for_backward_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass (outside checkpointed regions), counted with saved-tensor hooks."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    sum(o.float().mean() for o in (out if isinstance(out, list) else [out])).backward()
    return total


@pytest.mark.parametrize('name', BH_MODELS)
def test_grad_checkpointing_cuts_saved_activations(name):
    """Deterministic proxy of the benchmark's memory column: checkpointing at least halves what is kept."""
    model = timm.create_model(name, num_classes=4).train()
    x = torch.randn(1, 3, 64, 96)
    without = _saved_for_backward_bytes(model, x)
    model.set_grad_checkpointing(True)
    with_cp = _saved_for_backward_bytes(model, x)
    assert with_cp < 0.6 * without


@pytest.mark.parametrize('name', BH_MODELS)
def test_grad_checkpointing_keeps_no_full_resolution_stem_map(name):
    """The full-resolution stem is recomputed too: with checkpointing, no 64-channel map at input size is kept."""
    model = timm.create_model(name, num_classes=4).train()
    x = torch.randn(1, 3, 64, 96)
    shapes: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        shapes.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        full_res = [s for s in shapes if len(s) == 4 and s[-2:] == (64, 96) and s[1] > 3]
        assert bool(full_res) is not enable, (enable, full_res)
        sum(o.float().mean() for o in (out if isinstance(out, list) else [out])).backward()


def test_memory_worker_refuses_a_model_without_checkpointing():
    """timm's HRNets have no gradient checkpointing: the memory column says so instead of failing."""
    spec = {'model': 'hrnet_w18', 'checkpointing': True, 'batch': 1, 'input_size_hw': [64, 96]}
    spec['threads'] = torch.get_num_threads()  # the worker sets it: keep this process's
    refused = speed.memory_worker(spec)
    assert refused['peak_mb'] is None and 'has no gradient checkpointing' in refused['note']


@pytest.mark.slow
def test_memory_worker_measures_a_training_step_in_a_subprocess():
    """The CPU memory column: a fresh process per measurement, peak RSS of one step; checkpointing lowers it.

    (In a long-lived process, memory freed earlier stays resident and hides the step: hence the subprocess.)
    """
    settings = speed.Settings(input_size_hw=(256, 320), threads=torch.get_num_threads())
    without = speed._memory_cpu('bh_resnet50', False, settings)
    with_cp = speed._memory_cpu('bh_resnet50', True, settings)
    assert without['peak_mb'] > 100 and without['note'] == ''
    assert with_cp['peak_mb'] < without['peak_mb']


def test_candidates_option_limits_the_auto_search():
    """`--candidates eager,jit` (how the CUDA result was made within a 15-minute device budget) reaches the run."""
    settings = speed._settings(speed._parser().parse_args(['--candidates', 'eager,jit']))
    assert settings.candidates == ('eager', 'jit')
    assert speed._settings(speed._parser().parse_args([])).candidates is None
