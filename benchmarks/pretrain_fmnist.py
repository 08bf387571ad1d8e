"""The paper's Table 5 claim on the data set we can get: BH-ResNet50 vs ResNet50 pre-trained on Fashion-MNIST.

Runs ``bh-models train`` for every model x seed with one recipe (the same command line but for ``--model`` and
``--seed``), side by side as separate processes (on one GPU they share it; ``--parallel 1`` runs them one after
another), then writes ``pretrain_fmnist.{md,json}``: top-1 per run, mean and sample std per model, the
difference, the exact commands. Seed 0 of the first model can be exported as the published weight (``--export``).

``--budget-s S`` sizes the recipe to a time budget: a short probe (all runs side by side, ``--max-steps``) measures
images/s under the same sharing, and the epoch count is the largest that fits what is left of ``S``, the same for
every run (so the comparison stays paired). ``--epochs N`` fixes it instead.

    python -m benchmarks.pretrain_fmnist --data-dir /usr/share/datasets/fashion-mnist --epochs 30
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / 'results'
STEM = 'pretrain_fmnist'
PROBE_STEPS = 60


def _train_argv(model: str, seed: int, data_dir: str, output: Path, recipe: Sequence[str]) -> list[str]:
    return [
        '--model',
        model,
        '--data',
        'fmnist',
        '--data-dir',
        data_dir,
        '--output',
        str(output),
        '--seed',
        str(seed),
        *recipe,
    ]


def _launch(runs: list[dict[str, Any]], parallel: int, threads: int, log_dir: Path) -> None:
    """Run ``bh-models train`` for each entry of ``runs`` (``argv``, ``log``), at most ``parallel`` at a time."""
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'PYTHONUNBUFFERED': '1'}
    pending, active = list(runs), []
    while pending or active:
        while pending and len(active) < parallel:
            run = pending.pop(0)
            log = open(log_dir / run['log'], 'w')  # noqa: SIM115 - closed when the process ends
            cmd = [sys.executable, '-m', 'bh_models.cli', 'train', *run['argv']]
            active.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, run))
        time.sleep(1)
        for item in list(active):
            proc, log, run = item
            if proc.poll() is not None:
                log.close()
                run['returncode'] = proc.returncode
                active.remove(item)


def _read_final(output: Path) -> dict[str, Any] | None:
    path = output / 'final.json'
    return json.loads(path.read_text()) if path.is_file() else None


def _evaluations(epochs: int, eval_every: int) -> int:
    """How many test-set passes ``bh-models train`` makes in ``epochs`` epochs (every ``eval_every`` and the last)."""
    every = max(eval_every, 1)
    return epochs // every + (epochs % every != 0)


def plan_epochs(
    planned: Sequence[str],
    img_s: dict[str, float],
    eval_s: dict[str, float],
    parallel: int,
    eval_every: int,
    margin: float,
    budget_s: float,
    max_epochs: int,
    train_images: int = 60000,
) -> tuple[int, dict[str, Any]]:
    """Largest epoch count (at least 1, at most ``max_epochs``) that fits ``budget_s``.

    ``planned`` holds one model name per run in launch order, ``parallel`` run at a time. Each wave lasts as long as
    its slowest run; a run's time is its training images at the probed ``img_s`` plus its test-set passes at the
    probed ``eval_s``, times ``margin``.
    """
    waves = [planned[i : i + parallel] for i in range(0, len(planned), parallel)]

    def plan_s(epochs: int) -> float:
        n_eval = _evaluations(epochs, eval_every)
        return margin * sum(max(epochs * train_images / img_s[m] + n_eval * eval_s[m] for m in w) for w in waves)

    epochs = 1
    while epochs < max_epochs and plan_s(epochs + 1) <= budget_s:
        epochs += 1
    return epochs, {'waves': len(waves), 'plan_s': round(plan_s(epochs), 1), 'epochs': epochs}


def probe_epochs(
    models: Sequence[str], seeds: Sequence[int], args: argparse.Namespace, recipe: list[str], budget_s: float
) -> tuple[int, dict[str, Any]]:
    """Largest epoch count whose runs, side by side as planned, fit in ``budget_s`` (at least 1).

    The probe runs ``PROBE_STEPS`` steps of each run, ``args.parallel`` at a time as the real runs will be; one after
    another (``--parallel 1``) a model's speed does not depend on the seed, so one seed per model is probed. The time
    of the plan is the sum over its waves of the slowest run of the wave, times ``args.margin``.
    """
    work = Path(args.work_dir) / 'probe'
    work.mkdir(parents=True, exist_ok=True)
    probed = seeds[:1] if args.parallel == 1 else seeds
    runs = [
        {
            'argv': _train_argv(m, s, args.data_dir, work / f'{m}_s{s}', recipe)
            + ['--epochs', '1', '--max-steps', str(PROBE_STEPS), '--quiet'],
            'log': f'probe_{m}_s{s}.log',
        }
        for m in models
        for s in probed
    ]
    start = time.perf_counter()
    _launch(runs, args.parallel, args.threads, work)
    finals = {(m, s): _read_final(work / f'{m}_s{s}') for m in models for s in probed}
    if any(f is None or 'train_img_per_s' not in f for f in finals.values()):
        logs = ', '.join(str(work / r['log']) for r in runs)
        raise SystemExit(f'the probe failed; see {logs}')
    img_s = {m: min(finals[m, s]['train_img_per_s'] for s in probed) for m in models}
    eval_s = {m: max(finals[m, s]['history'][-1].get('eval_s', 0.0) for s in probed) for m in models}
    planned = [m for m in models for _ in seeds]  # the order _launch starts the real runs in
    epochs, plan = plan_epochs(
        planned, img_s, eval_s, args.parallel, args.eval_every, args.margin, budget_s, args.max_epochs
    )
    info = {
        'probe_s': round(time.perf_counter() - start, 1),
        'img_per_s': {m: round(v, 1) for m, v in img_s.items()},
        'eval_s': eval_s,
        'margin': args.margin,
        **plan,
    }
    return epochs, info


def summarize(models: Sequence[str], seeds: Sequence[int], work: Path) -> dict[str, Any]:
    """Per-model top-1 of each seed, mean and sample std."""
    out: dict[str, Any] = {}
    for model in models:
        rows = []
        for seed in seeds:
            final = _read_final(work / f'{model}_s{seed}')
            if final is not None:
                rows.append(
                    {
                        'seed': seed,
                        'top1': final['top1'],
                        'top5': final['top5'],
                        'epochs': final['epochs'],
                        'train_img_per_s': final.get('train_img_per_s'),
                        'device': final['device'],
                    }
                )
        top1 = [r['top1'] for r in rows]
        out[model] = {
            'runs': rows,
            'mean_top1': statistics.mean(top1) if top1 else None,
            'std_top1': statistics.stdev(top1) if len(top1) > 1 else None,
        }
    return out


def format_markdown(report: dict[str, Any]) -> str:
    """``pretrain_fmnist.md``."""
    lines = [
        "# Pre-training on Fashion-MNIST: BH vs standard (the paper's Table 5 claim, on the data we have)",
        '',
        f'Generated by `{report["command"]}` on {report["date"]}; do not edit by hand.',
        '',
        f'- device: {report["device"]}; torch {report["torch"]}, timm {report["timm"]}; {report["parallel"]} runs '
        f'side by side; wall time {report["wall_s"] / 60:.1f} min',
        f'- recipe (identical for every run but `--model`/`--seed`): `{report["recipe"]}`',
        f'- epochs: {report["epochs"]}'
        + (f' (sized by a probe to the time budget: {report["probe"]})' if report.get('probe') else ''),
        "- top-1 is measured on the 10,000 test images with timm's eval transform from the model's data config "
        '(resize to 32x32 bilinear, crop_pct 1.0), fp32',
        '',
        '| model | seed | top-1 % | top-5 % | epochs |',
        '|---|---|---|---|---|',
    ]
    for model, entry in report['results'].items():
        for run in entry['runs']:
            lines.append(f'| {model} | {run["seed"]} | {run["top1"]:.2f} | {run["top5"]:.2f} | {run["epochs"]} |')
    lines += ['', '| model | runs | mean top-1 % | std (sample) |', '|---|---|---|---|']
    for model, entry in report['results'].items():
        mean = f'{entry["mean_top1"]:.2f}' if entry['mean_top1'] is not None else '-'
        std = f'{entry["std_top1"]:.2f}' if entry['std_top1'] is not None else '-'
        lines.append(f'| {model} | {len(entry["runs"])} | {mean} | {std} |')
    if report.get('difference') is not None:
        lines += [
            '',
            f'Difference of the means ({report["models"][0]} - {report["models"][1]}): '
            f'{report["difference"]:+.2f} points. {report["verdict"]}',
        ]
    if report.get('export'):
        exp = report['export']
        lines += [
            '',
            f'Published weight: `{exp["name"]}` = seed {exp["seed"]} of {report["models"][0]}, saved as '
            f'{exp["dtype"]} (top-1 {exp["top1_saved"]:.2f} %, fp32 {exp["top1_fp32"]:.2f} %).',
        ]
    lines += ['', '## Commands', '', '```']
    lines += [c for c in report['commands']]
    lines += ['```', '']
    return '\n'.join(lines)


def _verdict(results: dict[str, Any], models: Sequence[str]) -> tuple[float | None, str]:
    a, b = (results[m] for m in models[:2])
    if a['mean_top1'] is None or b['mean_top1'] is None:
        return None, ''
    diff = a['mean_top1'] - b['mean_top1']
    spread = max(a['std_top1'] or 0.0, b['std_top1'] or 0.0)
    if abs(diff) <= spread:
        return diff, 'Within one standard deviation of the seeds: no difference shown at this budget.'
    better = models[0] if diff > 0 else models[1]
    return diff, f'{better} is ahead by more than one standard deviation of the seeds.'


def main(argv: Sequence[str] | None = None) -> int:
    """Run the paired comparison; 0 when every run finished."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog='python -m benchmarks.pretrain_fmnist', description=__doc__.split('\n')[0])
    p.add_argument('--data-dir', required=True)
    p.add_argument('--models', default='bh_resnet50,resnet50', help='comma-separated; the first is the BH model')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--epochs', type=int, default=0, help='fixed epoch count (or --budget-s)')
    p.add_argument('--budget-s', type=float, default=0, help='size the epochs to this many seconds of training')
    p.add_argument('--max-epochs', type=int, default=60)
    p.add_argument(
        '--margin',
        type=float,
        default=1.3,
        help="factor on the probe's time estimate (on an H100 with 6 runs side by side, 2026-11-26, whole epochs "
        "took at least 20 %% longer than the probe's steps said: data loading and evaluation interleave worse)",
    )
    p.add_argument('--parallel', type=int, default=1, help='runs side by side')
    p.add_argument('--threads', type=int, default=2, help='CPU threads per run (OMP_NUM_THREADS)')
    p.add_argument('--eval-every', type=int, default=5)
    p.add_argument('--work-dir', default='runs/pretrain_fmnist', help='run folders (checkpoints, logs)')
    p.add_argument('--results-dir', type=Path, default=RESULTS_DIR)
    p.add_argument('--export', default='', help='export seed 0 of the first model as this name.tag')
    p.add_argument('--export-dir', default='', help='where the exported weight and card go (default: weights/)')
    p.add_argument(
        '--train-args',
        default='--batch-size 128 --lr 0.1 --workers 2',
        help='further `bh-models train` options, the same for every run',
    )
    args = p.parse_args(argv)
    models, seeds = args.models.split(','), [int(s) for s in args.seeds.split(',')]
    if not args.epochs and not args.budget_s:
        p.error('give --epochs or --budget-s')
    start = time.perf_counter()
    recipe = [*shlex.split(args.train_args), '--eval-every', str(args.eval_every)]
    probe = None
    epochs = args.epochs
    if not epochs:
        epochs, probe = probe_epochs(models, seeds, args, recipe, args.budget_s - (time.perf_counter() - start))
        print(f'probe: {probe} -> {epochs} epochs', flush=True)
    recipe += ['--epochs', str(epochs), '--quiet']
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for model in models:
        for seed in seeds:
            extra = ['--export', args.export] if (args.export and model == models[0] and seed == seeds[0]) else []
            if extra and args.export_dir:
                extra += ['--export-dir', args.export_dir]
            runs.append(
                {
                    'argv': _train_argv(model, seed, args.data_dir, work / f'{model}_s{seed}', recipe) + extra,
                    'log': f'{model}_s{seed}.log',
                }
            )
    _launch(runs, args.parallel, args.threads, work)
    results = summarize(models, seeds, work)
    import timm
    import torch

    finals = [_read_final(work / f'{m}_s{s}') for m in models for s in seeds]
    device = next((f['device'] for f in finals if f), 'unknown')
    if device.startswith('cuda'):
        device = f'{device} ({torch.cuda.get_device_name(0)})'
    diff, verdict = _verdict(results, models) if len(models) > 1 else (None, '')
    exported = _read_final(work / f'{models[0]}_s{seeds[0]}')
    report = {
        'command': 'python -m benchmarks.pretrain_fmnist ' + shlex.join(argv),
        'date': time.strftime('%Y-%m-%d'),
        'device': device,
        'torch': torch.__version__,
        'timm': timm.__version__,
        'parallel': args.parallel,
        'models': models,
        'seeds': seeds,
        'epochs': epochs,
        'probe': probe,
        'recipe': 'bh-models train --data fmnist ' + shlex.join(recipe),
        'results': results,
        'difference': diff,
        'verdict': verdict,
        'export': (
            {'name': args.export, 'seed': seeds[0], **exported['export']}
            if args.export and exported and 'export' in exported
            else None
        ),
        'commands': ['bh-models train ' + shlex.join(r['argv']) for r in runs],
        'returncodes': [r.get('returncode') for r in runs],
        'wall_s': time.perf_counter() - start,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f'{STEM}.json').write_text(json.dumps(report, indent=1) + '\n')
    (args.results_dir / f'{STEM}.md').write_text(format_markdown(report))
    print(format_markdown(report))
    return 0 if all(r.get('returncode') == 0 for r in runs) else 1


if __name__ == '__main__':
    raise SystemExit(main())
