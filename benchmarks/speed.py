"""Speed and memory of the Table 4 pairs: does equal FLOPs mean equal time? (``bh-models benchmark --speed``).

For each pair of Table 4 (ResNet50 / BH-ResNet50, HRNet18 / BH-HRNet18, HRNet32 / BH-HRNet32), built as Table 4
counts its FLOPs (``bh_models.complexity.build_for_scope``: the ResNets with their classifier head, the HRNets as the
trunk up to the raw branch outputs), random weights, at 640x512 (640 wide):

* **latency** (median of the timed rounds after warm-up) and throughput (images/s) for each batch size, in three
  variants: ``eager_nchw`` (the model as users run it by default), ``eager_cl`` (channels_last weights and input)
  and ``optimized`` (``bh_models.optimize_for_inference``: BN folded, channels_last, the fastest backend by
  measurement). The standard and the BH model are timed **interleaved**, one call each per round (alternating which
  goes first), so machine load hits both alike; the ratio is BH median / standard median.
* **peak memory of one training step** (forward + backward of ``sum(outputs.mean())``, train mode) at batch 2,
  with and without gradient checkpointing (``set_grad_checkpointing``; timm's own HRNets have none). On the CPU each
  measurement runs in a fresh subprocess that resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) just
  before the step and reports ``VmHWM - RSS before the step``: all memory the step touched (PyTorch tensors,
  oneDNN scratch, allocator slack), not an estimate. On CUDA: ``torch.cuda.max_memory_allocated`` minus the
  allocation before the step.
* **per-stage** FLOPs and eager channels_last latency at batch 1, for the Fig. 2 chart (``benchmarks/fig2.py``).

The CPU is always measured; CUDA too when ``torch.cuda.is_available()`` (bf16 autocast, CUDA events). Each device
gets ``speed_<device>.json``, ``speed_<device>.md``, ``speed_<device>.png`` (ratios and memory) and
``fig2_<device>.png`` in ``benchmarks/results/``. The report records the device, torch version, thread count and
the load average before and after: timings on a shared machine are only as good as its load.

On the CPU the allocator matters as much as the kernels: glibc maps every block above 32 MB afresh and the kernel
page-faults it in on each call, and the BH models have more such blocks (64 channels at full resolution). Started
with ``THP_MEM_ALLOC_ENABLE=1`` (read by torch once, at startup), torch puts large tensors on transparent huge
pages, a fault per 2 MB instead of per 4 kB; the files then get a ``_thp`` suffix (``speed_cpu_thp.json``, ...).
The targets of issue 7 are reported, not asserted: the exit status is 0 unless the run itself fails.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import bh_models
from benchmarks import fig2
from bh_models.complexity import build_for_scope, describe_device
from bh_models.inference import BACKENDS, optimize_for_inference
from bh_models.paper import INPUT_SIZE_HW, TABLE4, Table4Row

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / 'results'
COMMAND = 'bh-models benchmark --speed'
VARIANTS: tuple[str, ...] = ('eager_nchw', 'eager_cl', 'optimized')
ROLES: tuple[str, ...] = ('standard', 'bh')
MEMORY_BATCH = 2
# full run: (batch size, timed rounds). At batch 8 one call takes 2.5-12 s on 2 CPU cores (BH-HRNet32 eager NCHW the
# slowest), so 2 rounds there (their mean, no separate warm-up) keep the whole run near 11 min
FULL_BATCHES: tuple[tuple[int, int], ...] = ((1, 7), (8, 2))
AUTO_REPEATS = 5  # timed calls per candidate when optimize_for_inference picks the backend (first batch size)
QUICK_BATCHES: tuple[tuple[int, int], ...] = ((1, 3),)
MEMORY_METHOD = {
    'cpu': 'fresh subprocess per measurement; peak RSS mark reset (/proc/self/clear_refs) before the step; '
    'peak = VmHWM after the step - RSS before it (everything the step touched)',
    'cuda': 'torch.cuda.max_memory_allocated() after the step - torch.cuda.memory_allocated() before it',
}


@dataclass(frozen=True)
class Pair:
    """A Table 4 standard row and its BH row."""

    standard: Table4Row
    bh: Table4Row

    @property
    def models(self) -> dict[str, str]:
        """Role -> timm model name."""
        return {'standard': self.standard.model, 'bh': self.bh.model}

    @property
    def labels(self) -> dict[str, str]:
        """Role -> the paper's label."""
        return {'standard': self.standard.label, 'bh': self.bh.label}

    def row(self, role: str) -> Table4Row:
        """The Table 4 row of ``role``."""
        return self.standard if role == 'standard' else self.bh


def table4_pairs() -> list[Pair]:
    """Every BH row of Table 4 paired with its standard row (``bh_<name>`` with ``<name>``), in table order."""
    rows = {row.model: row for row in TABLE4}
    return [Pair(rows[r.model[3:]], r) for r in TABLE4 if r.model.startswith('bh_') and r.model[3:] in rows]


@dataclass
class Settings:
    """What one run measures."""

    input_size_hw: tuple[int, int] = INPUT_SIZE_HW
    batches: tuple[tuple[int, int], ...] = FULL_BATCHES  # (batch size, timed rounds)
    warmup: int | None = None  # untimed calls of every variant first; None: 2 at batch 1, 1 at 2-4, 0 above
    backend: str = 'auto'
    candidates: tuple[str, ...] | None = None  # what backend 'auto' tries; None: default_candidates(device)
    memory: bool = True
    stages: bool = True
    stage_rounds: int = 3
    charts: bool = True
    threads: int = field(default_factory=torch.get_num_threads)

    def warmup_calls(self, batch: int) -> int:
        """Untimed calls of each variant before timing at ``batch``.

        By default none above batch 4: there a call takes seconds on a CPU, one-off costs (oneDNN primitive
        creation) are a few percent of it and the median of the rounds drops them; the optimized variant has
        already run while ``optimize_for_inference`` checked and timed it.
        """
        if self.warmup is not None:
            return self.warmup
        return 2 if batch == 1 else 1 if batch <= 4 else 0


# --- timing -------------------------------------------------------------------------------------------------------


class _Timer:
    """Wall-clock (CPU) or CUDA-event timing of one call, in ms."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def _autocast(device: torch.device) -> Any:
    return torch.autocast('cuda', dtype=torch.bfloat16) if device.type == 'cuda' else nullcontext()


def _rtol(device: torch.device) -> float:
    return 1e-4 if device.type == 'cpu' else 5e-2  # bf16 autocast on CUDA: folding changes bf16 rounding


def _build(name: str, row: Table4Row, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return build_for_scope(name, row.flops_scope, device)


def _optimized_info(opt: Any) -> dict[str, Any]:
    return {
        'backend': opt.backend,
        'tiled': opt.tiled,
        'folded_bn': len(opt.folded),
        'max_rel_error': opt.max_rel_error,
        'candidates': [{**asdict(c), 'name': c.name} for c in opt.candidates],
    }


def time_pair(
    pair: Pair,
    device: torch.device,
    batch: int,
    rounds: int,
    settings: Settings,
    choices: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Latency of the three variants of both models of ``pair`` at ``batch``, interleaved.

    ``choices`` maps role -> keyword arguments of ``optimize_for_inference``. After an ``'auto'`` search over all
    candidates (at the first batch size) the entry becomes what it picked (backend, tiled stem or not), and later
    batch sizes reuse that instead of building, compiling and timing every candidate again at seconds per call.
    """
    height, width = settings.input_size_hw
    x = torch.randn(batch, 3, height, width, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    optimized: dict[str, Any] = {}
    with torch.inference_mode(False), _autocast(device):
        for role, name in pair.models.items():
            model = _build(name, pair.row(role), device)
            model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            repeats = AUTO_REPEATS if choices[role].get('backend') == 'auto' else 1
            opt = optimize_for_inference(model, x, rtol=_rtol(device), repeats=repeats, **choices[role])
            choices[role] = {'backend': opt.backend, 'tile_stem': bool(opt.tiled)}
            optimized[role] = _optimized_info(opt)
            calls[(role, 'eager_nchw')] = lambda m=model: m(x)
            calls[(role, 'eager_cl')] = lambda m=model_cl: m(x_cl)
            calls[(role, 'optimized')] = lambda m=opt: m(x)
    timer = _Timer(device)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    with torch.inference_mode(), _autocast(device):
        for _ in range(settings.warmup_calls(batch)):
            for fn in calls.values():
                fn()
        for r in range(rounds):
            for variant in VARIANTS:
                for role in ROLES if r % 2 == 0 else ROLES[::-1]:
                    samples[(role, variant)].append(timer(calls[(role, variant)]))
    rows = []
    for variant in VARIANTS:
        med = {role: statistics.median(samples[(role, variant)]) for role in ROLES}
        rows.append(
            {
                'batch': batch,
                'variant': variant,
                'standard_ms': med['standard'],
                'bh_ms': med['bh'],
                'ratio': med['bh'] / med['standard'],
                'standard_img_s': batch * 1e3 / med['standard'],
                'bh_img_s': batch * 1e3 / med['bh'],
                'standard_samples_ms': samples[('standard', variant)],
                'bh_samples_ms': samples[('bh', variant)],
            }
        )
    return {'latency': rows, 'optimized': optimized}


# --- memory -------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _hwm_bytes() -> int:
    with open('/proc/self/status') as f:
        return int(re.search(r'VmHWM:\s+(\d+)\s+kB', f.read()).group(1)) * 1024


def _set_checkpointing(model: nn.Module, enable: bool) -> str:
    """Turn gradient checkpointing on; '' on success, else why the model cannot."""
    if not enable:
        return ''
    try:
        getattr(model, 'net', model).set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError) as exc:
        return f'{type(getattr(model, "net", model)).__name__} has no gradient checkpointing ({exc})'
    return ''


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    out = model(x)
    loss = sum(t.float().mean() for t in tree_leaves(out))
    loss.backward()


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One training-step peak-memory measurement in this (fresh) process on the CPU; see ``MEMORY_METHOD``."""
    torch.set_num_threads(int(spec['threads']))
    row = next(r for r in TABLE4 if r.model == spec['model'])
    model = _build(spec['model'], row, torch.device('cpu')).train()
    note = _set_checkpointing(model, spec['checkpointing'])
    if note:
        return {'peak_mb': None, 'note': note}
    x = torch.randn(spec['batch'], 3, *spec['input_size_hw'])
    gc.collect()
    before = _rss_bytes()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak-RSS mark to the current RSS
    start = time.perf_counter()
    _train_step(model, x)
    seconds = time.perf_counter() - start
    return {'peak_mb': (_hwm_bytes() - before) / 2**20, 'rss_before_mb': before / 2**20, 'step_s': seconds, 'note': ''}


def _memory_cpu(name: str, checkpointing: bool, settings: Settings) -> dict[str, Any]:
    spec = {
        'model': name,
        'checkpointing': checkpointing,
        'batch': MEMORY_BATCH,
        'input_size_hw': list(settings.input_size_hw),
        'threads': settings.threads,
    }
    proc = subprocess.run(
        [sys.executable, '-m', 'benchmarks.speed', '--memory-worker', json.dumps(spec)],
        capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f'memory worker for {name} failed:\n{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_cuda(name: str, checkpointing: bool, settings: Settings, device: torch.device) -> dict[str, Any]:
    row = next(r for r in TABLE4 if r.model == name)
    model = _build(name, row, device).train()
    note = _set_checkpointing(model, checkpointing)
    if note:
        return {'peak_mb': None, 'note': note}
    x = torch.randn(MEMORY_BATCH, 3, *settings.input_size_hw, device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with _autocast(device):
        _train_step(model, x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) - before
    del model, x
    torch.cuda.empty_cache()
    return {'peak_mb': peak / 2**20, 'note': ''}


def memory_pair(pair: Pair, device: torch.device, settings: Settings) -> dict[str, Any]:
    """Peak training-step memory of both models, with and without gradient checkpointing."""
    out: dict[str, Any] = {'batch': MEMORY_BATCH, 'method': MEMORY_METHOD[device.type]}
    for role, name in pair.models.items():
        out[role] = {}
        for key, ckpt in (('no_checkpointing', False), ('checkpointing', True)):
            if device.type == 'cpu':
                out[role][key] = _memory_cpu(name, ckpt, settings)
            else:
                out[role][key] = _memory_cuda(name, ckpt, settings, device)
    peak = {role: {k: out[role][k]['peak_mb'] for k in ('no_checkpointing', 'checkpointing')} for role in ROLES}
    out['ratio_no_checkpointing'] = peak['bh']['no_checkpointing'] / peak['standard']['no_checkpointing']
    for role in ROLES:
        with_cp, without = peak[role]['checkpointing'], peak[role]['no_checkpointing']
        out[role]['checkpointing_saves'] = None if with_cp is None else 1 - with_cp / without
    bh_cp = peak['bh']['checkpointing']
    out['bh_checkpointing_vs_standard_without'] = (
        None if bh_cp is None else bh_cp / peak['standard']['no_checkpointing']
    )
    return out


# --- stages (Fig. 2) ----------------------------------------------------------------------------------------------


def stages_pair(pair: Pair, device: torch.device, settings: Settings) -> dict[str, Any]:
    """Per-stage FLOPs (one image) and eager channels_last latency (batch 1) of both models."""
    height, width = settings.input_size_hw
    x = torch.randn(1, 3, height, width, device=device)
    out: dict[str, Any] = {'names': list(fig2.STAGES), 'latency_variant': 'eager_cl, batch 1'}
    models = {}
    for role, name in pair.models.items():
        models[role] = _build(name, pair.row(role), device).to(memory_format=torch.channels_last)
        out[role] = {'flops': fig2.stage_flops(name, settings.input_size_hw), 'latency_ms': []}
    # interleave the two models round by round, as for the latency table
    samples: dict[str, list[list[float]]] = {role: [] for role in ROLES}
    with _autocast(device):
        for _ in range(settings.stage_rounds):
            for role in ROLES:
                warmup = settings.warmup_calls(1) if not samples[role] else 0
                samples[role].append(fig2.stage_latency_ms(models[role], x, 1, warmup, channels_last=True))
    for role in ROLES:
        out[role]['latency_ms'] = [statistics.median(s) for s in zip(*samples[role], strict=True)]
    return out


# --- the run ------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            match = re.search(r'model name\s*:\s*(.+)', f.read())
        return match.group(1).strip() if match else platform.processor()
    except OSError:
        return platform.processor()


def thp_enabled() -> bool:
    """Whether torch backs large CPU tensors with transparent huge pages (``THP_MEM_ALLOC_ENABLE=1`` at startup)."""
    return os.environ.get('THP_MEM_ALLOC_ENABLE') == '1'  # torch reads it once, and accepts only '0' and '1'


def _thp_report() -> dict[str, Any]:
    try:
        with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
            mode = f.read().strip()
    except OSError:
        mode = 'unknown'
    return {'THP_MEM_ALLOC_ENABLE': os.environ.get('THP_MEM_ALLOC_ENABLE'), 'enabled': thp_enabled(), 'kernel': mode}


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@contextmanager
def _logged(what: str, quiet: bool) -> Iterator[None]:
    start = time.perf_counter()
    if not quiet:
        print(f'  {what} ...', end='', flush=True, file=sys.stderr)
    yield
    if not quiet:
        print(f' {time.perf_counter() - start:.0f} s', file=sys.stderr, flush=True)


def run_device(
    device: torch.device, pairs: Sequence[Pair], settings: Settings, command: str, quiet: bool = False
) -> dict[str, Any]:
    """Measure every pair on ``device``; the JSON-ready report."""
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    load_before = _load()
    results = []
    for pair in pairs:
        entry: dict[str, Any] = {'models': pair.models, 'labels': pair.labels, 'scope': pair.bh.flops_scope}
        choices: dict[str, dict[str, Any]] = {
            role: {'backend': settings.backend, 'candidates': settings.candidates} for role in ROLES
        }
        entry['latency'], entry['optimized'] = [], {}
        for batch, rounds in settings.batches:
            with _logged(f'{pair.bh.model} vs {pair.standard.model}: latency at batch {batch}', quiet):
                timed = time_pair(pair, device, batch, rounds, settings, choices)
            entry['latency'] += timed['latency']
            entry['optimized'][str(batch)] = timed['optimized']
        if settings.memory:
            with _logged(f'{pair.bh.model} vs {pair.standard.model}: training memory', quiet):
                entry['memory'] = memory_pair(pair, device, settings)
        if settings.stages:
            with _logged(f'{pair.bh.model} vs {pair.standard.model}: stages', quiet):
                entry['stages'] = stages_pair(pair, device, settings)
        results.append(entry)
    return {
        'title': 'Speed and memory of the Table 4 pairs (BH / standard, measured interleaved in one run)',
        'command': command,
        'date': datetime.date.today().isoformat(),
        'device': describe_device(device),
        'device_type': device.type,
        'cpu': _cpu_model(),
        'threads': settings.threads,
        'cpu_count': os.cpu_count(),
        'precision': 'float32' if device.type == 'cpu' else 'bfloat16 autocast',
        'versions': {
            'python': platform.python_version(),
            'torch': torch.__version__,
            'timm': timm.__version__,
            'bh_models': bh_models.__version__,
        },
        'load_avg_1_5_15': {'before': load_before, 'after': _load()},
        'huge_pages': _thp_report() if device.type == 'cpu' else None,
        'input_size_hw': list(settings.input_size_hw),
        'settings': {
            'batches_rounds': [list(b) for b in settings.batches],
            'warmup_calls': {str(b): settings.warmup_calls(b) for b, _ in settings.batches},
            'backend': settings.backend,
            'candidates': list(settings.candidates) if settings.candidates else 'default',
            'available_backends': list(BACKENDS),
        },
        'memory_method': MEMORY_METHOD[device.type],
        'pairs': results,
        'targets': targets(results),
        'wall_s': time.perf_counter() - started,
    }


def _latency(entry: dict[str, Any], variant: str, batch: int) -> dict[str, Any] | None:
    return next((r for r in entry['latency'] if r['variant'] == variant and r['batch'] == batch), None)


def targets(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 7's targets, per pair and batch size: measured value and whether it is met (reported, not asserted)."""
    out = []
    for entry in results:
        bh, std = entry['labels']['bh'], entry['labels']['standard']
        for batch in sorted({r['batch'] for r in entry['latency']}):
            opt, eager = _latency(entry, 'optimized', batch), _latency(entry, 'eager_nchw', batch)
            out.append(
                {
                    'target': f'{bh} / {std} latency, both optimized, batch {batch} <= 1.05',
                    'value': opt['ratio'],
                    'met': opt['ratio'] <= 1.05,
                }
            )
            vs_default = opt['bh_ms'] / eager['standard_ms']
            out.append(
                {
                    'target': f'optimized {bh} / eager NCHW {std}, batch {batch} < 1',
                    'value': vs_default,
                    'met': vs_default < 1,
                }
            )
        memory = entry.get('memory')
        if memory and memory['bh_checkpointing_vs_standard_without'] is not None:
            value = memory['bh_checkpointing_vs_standard_without']
            out.append(
                {
                    'target': f'{bh} training peak with checkpointing / {std} without <= 1',
                    'value': value,
                    'met': value <= 1,
                }
            )
    return out


# --- output -------------------------------------------------------------------------------------------------------


def _md_table(lines: list[list[str]]) -> list[str]:
    out = ['| ' + ' | '.join(lines[0]) + ' |', '|' + '---|' * len(lines[0])]
    return out + ['| ' + ' | '.join(line) + ' |' for line in lines[1:]]


def _mb(value: float | None) -> str:
    return '-' if value is None else f'{value:.0f}'


def _pct(value: float | None) -> str:
    return '-' if value is None else f'{100 * value:.0f} %'


def latency_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header + one line per pair, batch and variant."""
    lines = [['pair', 'batch', 'variant', 'standard ms', 'BH ms', 'BH / standard', 'standard img/s', 'BH img/s']]
    for entry in report['pairs']:
        name = f'{entry["labels"]["bh"]} / {entry["labels"]["standard"]}'
        for r in entry['latency']:
            lines.append(
                [
                    name, str(r['batch']), r['variant'], f'{r["standard_ms"]:.1f}', f'{r["bh_ms"]:.1f}',
                    f'{r["ratio"]:.3f}', f'{r["standard_img_s"]:.2f}', f'{r["bh_img_s"]:.2f}',
                ]
            )  # fmt: skip
    return lines


def backend_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header + one line per model and batch: the backend ``optimize_for_inference`` used and what it tried."""
    lines = [['model', 'batch', 'backend', 'folded BN', 'max rel. error', 'candidates (ms on the input; build s)']]
    for entry in report['pairs']:
        for batch, info in entry['optimized'].items():
            for role in ROLES:
                o = info[role]
                tried = ', '.join(
                    f'{c["name"]} '
                    + (f'FAILED ({c["error"]})' if c['error'] else f'{c["latency_ms"]:.1f}' if c['latency_ms'] else '-')
                    + f'; {c["build_s"]:.1f}'
                    for c in o['candidates']
                )
                lines.append(
                    [
                        entry['models'][role], batch, o['backend'] + (' + tiled stem' if o['tiled'] else ''),
                        str(o['folded_bn']),
                        f'{o["max_rel_error"]:.1e}', tried,
                    ]
                )  # fmt: skip
    return lines


def memory_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header + one line per model: peak training-step memory with and without checkpointing."""
    lines = [['model', 'no checkpointing MB', 'checkpointing MB', 'checkpointing saves', 'note']]
    for entry in report['pairs']:
        memory = entry.get('memory')
        if not memory:
            continue
        for role in ROLES:
            m = memory[role]
            lines.append(
                [
                    entry['models'][role], _mb(m['no_checkpointing']['peak_mb']), _mb(m['checkpointing']['peak_mb']),
                    _pct(m['checkpointing_saves']), m['checkpointing']['note'] or '-',
                ]
            )  # fmt: skip
    return lines


def stage_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header + one line per model: share of FLOPs and of latency per stage."""
    lines = [['model', 'share of', *fig2.STAGES]]
    for entry in report['pairs']:
        stages = entry.get('stages')
        if not stages:
            continue
        for role in ROLES:
            for key, what in (('flops', 'FLOPs'), ('latency_ms', 'latency')):
                values = stages[role][key]
                total = sum(values)
                lines.append([entry['models'][role], what, *(f'{100 * v / total:.1f} %' for v in values)])
    return lines


def _allocator_text(report: dict[str, Any]) -> str:
    thp = report.get('huge_pages')
    if not thp:
        return 'n/a'
    if thp['enabled']:
        return f'THP_MEM_ALLOC_ENABLE=1: large tensors on transparent huge pages (kernel: {thp["kernel"]})'
    return (
        'default allocator (glibc malloc: blocks over 32 MB are mapped fresh and page-faulted on every call; '
        f'THP_MEM_ALLOC_ENABLE unset, kernel THP: {thp["kernel"]})'
    )


def format_markdown(report: dict[str, Any]) -> str:
    """``speed_<device>.md``."""
    height, width = report['input_size_hw']
    v = report['versions']
    load = report['load_avg_1_5_15']
    md = [
        f'# Speed and memory at {width}x{height}: BH vs standard ({report["device"]})',
        '',
        f'Generated by `{report["command"]}` on {report["date"]}; do not edit by hand.',
        '',
        f'- device: {report["device"]} ({report["cpu"]}), {report["threads"]} torch threads, '
        f'{report["cpu_count"]} CPUs, {report["precision"]}',
        f'- versions: python {v["python"]}, torch {v["torch"]}, timm {v["timm"]}, bh_models {v["bh_models"]}',
        f'- load average (1/5/15 min): {load["before"]} before, {load["after"]} after; run took '
        f'{report["wall_s"]:.0f} s',
        f'- CPU memory: {_allocator_text(report)}',
        f'- input: batch x 3 x {height} x {width}, random weights; models built as Table 4 counts them '
        '(ResNets with their classifier head, HRNets as the trunk up to the raw branch outputs)',
        '- latency: median of the timed rounds after warm-up; standard and BH interleaved call by call; '
        f'(batch, rounds): {report["settings"]["batches_rounds"]}, untimed warm-up calls per batch: '
        f'{report["settings"]["warmup_calls"]}',
        '- variants: `eager_nchw` (default eager), `eager_cl` (channels_last), `optimized` '
        '(`bh_models.optimize_for_inference`, backend by measurement)',
        '',
        '## Targets (reported, not asserted)',
        '',
        *_md_table(
            [['target', 'measured', 'met']]
            + [[t['target'], f'{t["value"]:.3f}', 'yes' if t['met'] else 'no'] for t in report['targets']]
        ),
        '',
        '## Latency and throughput',
        '',
        *_md_table(latency_rows(report)),
        '',
        '## Backend chosen by `optimize_for_inference`',
        '',
        *_md_table(backend_rows(report)),
        '',
    ]
    if any(e.get('memory') for e in report['pairs']):
        md += [
            f'## Peak memory of one training step (batch {MEMORY_BATCH})',
            '',
            f'Method: {report["memory_method"]}.',
            '',
            *_md_table(memory_rows(report)),
            '',
        ]
    if any(e.get('stages') for e in report['pairs']):
        md += [
            '## Share of FLOPs and latency per stage (Fig. 2)',
            '',
            'FLOPs: `bh_models.complexity` (ptflops, MMCV 1.x) on the trunk cut after each stage; latency: eager '
            'channels_last, batch 1.',
            '',
            *_md_table(stage_rows(report)),
            '',
        ]
    return '\n'.join(md)


def format_text(report: dict[str, Any]) -> str:
    """The summary printed to stdout: the ratio table and the targets."""

    def table(lines: list[list[str]]) -> str:
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        return '\n'.join('  '.join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)

    parts = [
        f'{report["device"]}, {report["threads"]} threads, torch {report["versions"]["torch"]}, '
        f'huge pages {"on" if (report.get("huge_pages") or {}).get("enabled") else "off"}, load '
        f'{report["load_avg_1_5_15"]["before"]} -> {report["load_avg_1_5_15"]["after"]}',
        '',
        table(latency_rows(report)),
    ]
    if len(memory_rows(report)) > 1:
        parts += ['', table(memory_rows(report))]
    parts += ['', *(f'{"met" if t["met"] else "NOT met"}: {t["target"]} ({t["value"]:.3f})' for t in report['targets'])]
    return '\n'.join(parts)


def plot_speed(report: dict[str, Any], path: Path) -> Path:
    """``speed_<device>.png``: BH / standard latency ratio per pair, variant and batch; peak training memory."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    pairs = report['pairs']
    has_memory = any(e.get('memory') for e in pairs)
    fig, axes = plt.subplots(1, 2 if has_memory else 1, figsize=(13 if has_memory else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    series = [(r['variant'], r['batch']) for r in pairs[0]['latency']]
    width = 0.8 / len(series)
    colors = {'eager_nchw': '#7f7f7f', 'eager_cl': '#1f77b4', 'optimized': '#2ca02c'}
    for i, (variant, batch) in enumerate(series):
        values = [_latency(e, variant, batch)['ratio'] for e in pairs]
        xs = [p + (i - (len(series) - 1) / 2) * width for p in range(len(pairs))]
        bars = ax.bar(xs, values, width, color=colors[variant], alpha=1.0 if batch == 1 else 0.55)
        bars.set_label(f'{variant}, batch {batch}')
        ax.bar_label(bars, fmt='%.2f', fontsize=6)
    ax.axhline(1.0, color='black', linewidth=0.8)
    ax.axhline(1.05, color='#d62728', linewidth=0.8, linestyle='--', label='target 1.05')
    ax.set_xticks(range(len(pairs)), [f'{e["labels"]["bh"]}\n/ {e["labels"]["standard"]}' for e in pairs], fontsize=8)
    ax.set_ylabel('latency ratio BH / standard')
    ax.set_title('latency: BH / standard (lower is better)', fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    if has_memory:
        ax = axes[0][1]
        names, without, with_cp = [], [], []
        for e in pairs:
            for role in ROLES:
                m = e['memory'][role]
                names.append(e['labels'][role])
                without.append(m['no_checkpointing']['peak_mb'] or 0)
                with_cp.append(m['checkpointing']['peak_mb'] or 0)
        xs = range(len(names))
        b1 = ax.bar([x - 0.2 for x in xs], without, 0.4, color='#7f7f7f', label='no checkpointing')
        b2 = ax.bar([x + 0.2 for x in xs], with_cp, 0.4, color='#2ca02c', label='gradient checkpointing')
        ax.bar_label(b1, fmt='%.0f', fontsize=6)
        ax.bar_label(b2, fmt='%.0f', fontsize=6)
        ax.set_xticks(list(xs), names, fontsize=7, rotation=20)
        ax.set_ylabel('MB')
        ax.set_title(f'peak memory of one training step, batch {MEMORY_BATCH} (0 = not supported)', fontsize=9)
        ax.legend(fontsize=7)
    height, width_px = report['input_size_hw']
    fig.suptitle(
        f'{report["device"]} ({report["cpu"]}), {report["threads"]} threads, {report["precision"]}, '
        f'{width_px}x{height}, torch {report["versions"]["torch"]}',
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: Path, charts: bool = True) -> list[Path]:
    """Write ``speed_<device>.json`` / ``.md`` (and the two PNG charts) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = '_thp' if (report.get('huge_pages') or {}).get('enabled') else ''
    stem = f'speed_{report["device_type"]}{suffix}'
    paths = [out_dir / f'{stem}.json', out_dir / f'{stem}.md']
    paths[0].write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    paths[1].write_text(format_markdown(report) + '\n', encoding='utf-8')
    if charts:
        paths.append(plot_speed(report, out_dir / f'{stem}.png'))
        if any(e.get('stages') for e in report['pairs']):
            height, width = report['input_size_hw']
            title = (
                f'Fig. 2 regenerated: share of FLOPs per stage (bh_models.complexity) and of latency per stage '
                f'(eager channels_last, batch 1, {width}x{height}, {report["device"]}, {report["threads"]} threads)'
            )
            fig_path = out_dir / f'fig2_{report["device_type"]}{suffix}.png'
            paths.append(fig2.plot_fig2(report['pairs'], fig_path, title))
    return paths


# --- command line -------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    names = sorted({name for pair in table4_pairs() for name in pair.models.values()})
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=(
            'Latency, throughput and training memory of the Table 4 pairs (standard vs BH) at 640x512: eager NCHW, '
            'eager channels_last and bh_models.optimize_for_inference, ratios measured interleaved in one run; '
            'per-stage FLOPs and latency (Fig. 2). CPU always, CUDA too when available. Writes speed_<device>.json, '
            '.md, .png and fig2_<device>.png. The full CPU run takes about 11 min on 2 cores (--quick: about 4 min).'
        ),
        epilog='exit status: 0 when the run completes (targets are reported, not asserted), 2 for usage errors.',
    )
    parser.add_argument(
        '--models', nargs='+', choices=names, metavar='MODEL', help=f'pairs containing any of: {" ".join(names)}'
    )
    parser.add_argument('--quick', action='store_true', help='batch 1 only, 3 rounds')
    parser.add_argument('--batch-sizes', nargs='+', type=int, metavar='N', help='batch sizes (default: 1 8)')
    parser.add_argument('--rounds', type=int, help='timed rounds per batch size (default: 7 at batch 1, 2 at 8)')
    parser.add_argument(
        '--warmup', type=int, help='untimed calls of each variant first (default: 2 at batch 1, 1 at 2-4, 0 above)'
    )
    parser.add_argument(
        '--backend', choices=('auto', *BACKENDS), default='auto', help='optimize_for_inference backend (auto)'
    )
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto', help='auto: cpu, + cuda if any')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='torch CPU threads')
    parser.add_argument('--input-size', nargs=2, type=int, metavar=('H', 'W'), default=list(INPUT_SIZE_HW))
    parser.add_argument('--no-memory', action='store_true', help='skip the training-memory measurement')
    parser.add_argument('--no-stages', action='store_true', help='skip per-stage FLOPs/latency (Fig. 2)')
    parser.add_argument('--no-charts', action='store_true', help='write no PNG charts (no matplotlib needed)')
    parser.add_argument('--out-dir', type=Path, default=DEFAULT_OUT_DIR, help=f'default: {DEFAULT_OUT_DIR}')
    parser.add_argument('--no-write', action='store_true', help='print only, write no files')
    parser.add_argument('--memory-worker', metavar='JSON', help=argparse.SUPPRESS)
    parser.add_argument(
        '--candidates',
        type=lambda text: tuple(c for c in text.split(',') if c),
        help="what --backend auto tries, comma-separated (e.g. 'eager,jit'); default: the device's default candidates",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if args.batch_sizes:
        default_rounds = dict(QUICK_BATCHES if args.quick else FULL_BATCHES)
        batches = tuple((b, args.rounds or default_rounds.get(b, 3)) for b in args.batch_sizes)
    else:
        base = QUICK_BATCHES if args.quick else FULL_BATCHES
        batches = tuple((b, args.rounds or r) for b, r in base)
    return Settings(
        input_size_hw=(args.input_size[0], args.input_size[1]),
        batches=batches,
        warmup=args.warmup,
        backend=args.backend,
        candidates=args.candidates,
        memory=not args.no_memory,
        stages=not args.no_stages,
        charts=not args.no_charts,
        threads=args.threads,
    )


def _command(argv: Sequence[str]) -> str:
    return ' '.join([COMMAND, *(shlex.quote(a) for a in argv if a not in ('--no-write',))])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the speed/memory benchmark (see the module docstring); 0 when it completes."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    parser = _parser()
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return 0
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda asked for, but torch.cuda.is_available() is False')
    charts = not (args.no_charts or args.no_write)
    if charts:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error('the charts need matplotlib: pip install -e ".[bench]" (or pass --no-charts)')
    settings = _settings(args)
    pairs = [p for p in table4_pairs() if not args.models or set(p.models.values()) & set(args.models)]
    devices = [torch.device('cpu')] if args.device in ('auto', 'cpu') else []
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        devices.append(torch.device('cuda'))
    for device in devices:
        print(f'{describe_device(device)}: {len(pairs)} pair(s), load average {_load()}', file=sys.stderr)
        report = run_device(device, pairs, settings, _command(argv))
        print(format_text(report))
        if not args.no_write:
            paths = write_report(report, args.out_dir, charts)
            print('wrote ' + ', '.join(str(p) for p in paths))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
