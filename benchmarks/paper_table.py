"""Reproduce the paper's Table 4 (params M, GFLOPs at 640x512) and write it to ``benchmarks/results/``.

Run as ``bh-models benchmark`` (or ``python -m benchmarks.paper_table``). Every row of ``bh_models.paper.TABLE4``
whose model is registered in timm is built (random weights), counted in every parameter convention and FLOP scope
of ``bh_models.complexity`` and compared with the paper in the convention and scope the row was printed in. Rows
whose model is not registered yet are reported as MISSING; they are listed, not measured, and do not fail the run.
The exit status is 1 when a measured row misses the paper's number, else 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import timm
import torch

import bh_models
from bh_models.complexity import PARAM_CONVENTIONS, SCOPES, describe_device, measure
from bh_models.paper import INPUT_SIZE_HW, TABLE4, Table4Row

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / 'results'
COMMAND = 'bh-models benchmark'
JSON_NAME = 'table4.json'
MD_NAME = 'table4.md'

FLOPS_UNIT = (
    "ptflops {ptflops} 'pytorch' backend, count_functional=False (= MMCV 1.x get_model_complexity_info): "
    'conv/linear multiply-adds (+bias), BatchNorm 2 x numel, ReLU numel, pooling input numel, upsample output '
    'numel, for one image; GFLOPs = that count / 1e9 (GMACs for the convolutions, not 2 FLOPs per MAC)'
)
PARAMS_UNIT = 'parameter count / 1e6, counted on the backbone (no classifier head)'
CONVENTIONS = {
    'all': 'every backbone parameter, BatchNorm included',
    'conv': 'weights of every Conv2d of the backbone',
    'conv_trainable_frozen1': 'Conv2d weights outside the stem and stage 1 (trainable when a detector freezes them)',
}
SCOPE_TEXT = {
    'backbone': "trunk only (ResNet: stem + layer1-4; HRNet: raw outputs of the 4 branches, no 'incre' head)",
    'backbone+head': "timm's default 1000-class model (ResNet: trunk + avg-pool + fc; HRNet: + classification head)",
}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return 'unknown'


def _pick_device(choice: str) -> torch.device:
    if choice == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if choice == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('bh-models benchmark: --device cuda asked for, but torch.cuda.is_available() is False')
    return torch.device(choice)


def _matches(values: dict[str, float], paper: float, tol: float) -> list[str]:
    return [key for key, value in values.items() if abs(value - paper) <= tol]


def measure_row(row: Table4Row, device: torch.device) -> dict[str, Any]:
    """Measure one Table 4 row (or report it MISSING) as a JSON-ready dict."""
    base: dict[str, Any] = {
        'label': row.label,
        'model': row.model,
        'reconstructed': row.reconstructed,
        'param_convention': row.param_convention,
        'flops_scope': row.flops_scope,
        'paper_params_m': row.params_m,
        'paper_gflops': row.gflops,
        'params_tol_m': round(row.params_tol_m, 6),
        'gflops_tol': round(row.gflops_tol, 6),
    }
    if not timm.is_model(row.model):
        return {**base, 'status': 'MISSING', 'note': f'{row.model} is not registered in timm: not measured'}
    result = measure(row.model, INPUT_SIZE_HW, device)
    params_m = {conv: result.params_m(conv) for conv in PARAM_CONVENTIONS}
    gflops = {scope: result.gflops(scope) for scope in SCOPES}
    ours_params, ours_gflops = params_m[row.param_convention], gflops[row.flops_scope]
    params_ok, gflops_ok = row.params_ok(ours_params), row.gflops_ok(ours_gflops)
    params_match = _matches(params_m, row.params_m, row.params_tol_m)
    gflops_match = _matches(gflops, row.gflops, row.gflops_tol)
    return {
        **base,
        'status': 'ok' if params_ok and gflops_ok else 'FAIL',
        'family': result.family,
        'params_m': ours_params,
        'params_diff_m': ours_params - row.params_m,
        'params_ok': params_ok,
        'gflops': ours_gflops,
        'gflops_diff': ours_gflops - row.gflops,
        'gflops_ok': gflops_ok,
        'params_by_convention': result.params,
        'flops_by_scope': result.flops,
        'params_m_by_convention': params_m,
        'gflops_by_scope': gflops,
        'params_reproduced_by': params_match,
        'gflops_reproduced_by': gflops_match,
        'note': _note(row, params_m, gflops, params_match, gflops_match),
    }


def _note(
    row: Table4Row,
    params_m: dict[str, float],
    gflops: dict[str, float],
    params_match: list[str],
    gflops_match: list[str],
) -> str:
    """One sentence per quantity saying which conventions/scopes reproduce the printed number."""
    parts = []
    for what, paper, values, match in (
        ('params', row.params_m, params_m, params_match),
        ('GFLOPs', row.gflops, gflops, gflops_match),
    ):
        if not match:
            parts.append(f"no convention reproduces the paper's {what} {paper:g}")
        elif len(match) < len(values):
            others = ', '.join(f'{k} {values[k]:.3f}' for k in values if k not in match)
            parts.append(f"paper's {what} {paper:g} needs {' or '.join(match)} ({others} would not match)")
    return '; '.join(parts)


def run_table(models: Sequence[str] | None, device: torch.device) -> list[dict[str, Any]]:
    """Measure the Table 4 rows (all, or those of ``models``) in table order."""
    rows = [row for row in TABLE4 if models is None or row.model in models]
    return [measure_row(row, device) for row in rows]


def build_report(results: list[dict[str, Any]], device: torch.device, command: str) -> dict[str, Any]:
    """Everything that goes into ``table4.json``."""
    measured = [r for r in results if r['status'] != 'MISSING']
    return {
        'table': 'Table 4 of Ning et al., "Rethinking the Backbone Architecture for Tiny Object Detection" '
        '(VISAPP 2023, arXiv:2303.11267)',
        'command': command,
        'date': datetime.date.today().isoformat(),
        'device': describe_device(device),
        'versions': {
            'python': '.'.join(map(str, sys.version_info[:3])),
            'torch': torch.__version__,
            'timm': timm.__version__,
            'ptflops': _version('ptflops'),
            'bh_models': bh_models.__version__,
        },
        'input_size_hw': list(INPUT_SIZE_HW),
        'units': {'gflops': FLOPS_UNIT.format(ptflops=_version('ptflops')), 'params_m': PARAMS_UNIT},
        'param_conventions': CONVENTIONS,
        'flops_scopes': SCOPE_TEXT,
        'rows': results,
        'summary': {
            'measured': len(measured),
            'passed': sum(r['status'] == 'ok' for r in measured),
            'failed': [r['model'] for r in measured if r['status'] == 'FAIL'],
            'missing': [r['model'] for r in results if r['status'] == 'MISSING'],
        },
    }


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return '-'
    return f'{value:+.3f}' if signed else f'{value:.3f}'


def _verdict(ok: bool | None) -> str:
    return '-' if ok is None else ('pass' if ok else 'FAIL')


def comparison_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header + one line per row: the paper's number against ours, in the row's own convention and scope."""
    lines = [
        [
            'label', 'model', 'params convention', 'paper M', 'ours M', 'diff', 'params',
            'FLOPs scope', 'paper G', 'ours G', 'diff', 'GFLOPs', 'status',
        ]
    ]  # fmt: skip
    for r in report['rows']:
        label = r['label'] + (' (reconstructed)' if r['reconstructed'] else '')
        lines.append(
            [
                label, r['model'], r['param_convention'], f"{r['paper_params_m']:.2f}",
                _fmt(r.get('params_m')), _fmt(r.get('params_diff_m'), signed=True), _verdict(r.get('params_ok')),
                r['flops_scope'], f"{r['paper_gflops']:.2f}",
                _fmt(r.get('gflops')), _fmt(r.get('gflops_diff'), signed=True), _verdict(r.get('gflops_ok')),
                r['status'],
            ]
        )  # fmt: skip
    return lines


def convention_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header + one line per measured row: every parameter convention and FLOP scope."""
    header = ['model', *(f'{c} M' for c in PARAM_CONVENTIONS), *(f'{s} G' for s in SCOPES), 'note']
    lines = [header]
    for r in report['rows']:
        if r['status'] == 'MISSING':
            continue
        lines.append(
            [
                r['model'],
                *(_fmt(r['params_m_by_convention'][c]) for c in PARAM_CONVENTIONS),
                *(_fmt(r['gflops_by_scope'][s]) for s in SCOPES),
                r['note'] or '-',
            ]
        )
    return lines


def _missing_lines(report: dict[str, Any]) -> list[str]:
    return [
        f'MISSING: {r["label"]} ({r["model"]}) is not registered in timm; not measured '
        '(missing rows are listed, they do not fail the run)'
        for r in report['rows']
        if r['status'] == 'MISSING'
    ]


def _summary_line(report: dict[str, Any]) -> str:
    s = report['summary']
    failed = f', FAILED: {", ".join(s["failed"])}' if s['failed'] else ''
    return f'{s["passed"]}/{s["measured"]} measured rows reproduce the paper, {len(s["missing"])} missing{failed}'


def format_text(report: dict[str, Any]) -> str:
    """The plain-text tables printed to stdout."""

    def table(lines: list[list[str]]) -> str:
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        return '\n'.join(
            '  '.join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
        )

    height, width = report['input_size_hw']
    head = (
        f'Table 4 at {width}x{height} (W x H), device {report["device"]}; '
        f'torch {report["versions"]["torch"]}, timm {report["versions"]["timm"]}, '
        f'ptflops {report["versions"]["ptflops"]}'
    )
    parts = [
        head,
        '',
        table(comparison_rows(report)),
        '',
        'every convention and scope:',
        table(convention_rows(report)),
    ]
    parts += ['', *_missing_lines(report)] if _missing_lines(report) else []
    parts += ['', _summary_line(report)]
    return '\n'.join(parts)


def format_markdown(report: dict[str, Any]) -> str:
    """``table4.md``: deterministic apart from the date (values rounded to 3 decimals)."""

    def table(lines: list[list[str]]) -> list[str]:
        rows = [[cell.replace('|', '\\|') for cell in line] for line in lines]
        out = ['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0])]
        return out + ['| ' + ' | '.join(line) + ' |' for line in rows[1:]]

    height, width = report['input_size_hw']
    v = report['versions']
    md = [
        '# Table 4: parameters and GFLOPs at 640x512',
        '',
        f'Generated by `{report["command"]}` on {report["date"]}; do not edit by hand. {report["table"]}.',
        '',
        f'- device: {report["device"]}',
        f'- versions: python {v["python"]}, torch {v["torch"]}, timm {v["timm"]}, ptflops {v["ptflops"]}, '
        f'bh_models {v["bh_models"]}',
        f'- input: one 3x{height}x{width} image ({width} wide, {height} high), random weights',
        f'- GFLOPs: {report["units"]["gflops"]}',
        f'- params (M): {report["units"]["params_m"]}',
        '- a row passes when both numbers are within the tolerance of `bh_models.paper.TABLE4` '
        '(the printed precision, or a relative band for reconstructed models)',
        '',
        '## Against the paper (each row in the convention and scope the paper used)',
        '',
        *table(comparison_rows(report)),
        '',
        '## Every convention and scope',
        '',
        *table(convention_rows(report)),
        '',
        'Parameter conventions:',
        '',
        *(f'- `{k}`: {text}' for k, text in report['param_conventions'].items()),
        '',
        'FLOP scopes:',
        '',
        *(f'- `{k}`: {text}' for k, text in report['flops_scopes'].items()),
        '',
    ]
    missing = _missing_lines(report)
    if missing:
        md += ['## Missing rows', '', *(f'- {line}' for line in missing), '']
    md += [_summary_line(report) + '.', '']
    return '\n'.join(md)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``table4.json`` and ``table4.md`` into ``out_dir`` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / JSON_NAME, out_dir / MD_NAME
    json_path.write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    md_path.write_text(format_markdown(report), encoding='utf-8')
    return json_path, md_path


def _parser() -> argparse.ArgumentParser:
    names = [row.model for row in TABLE4]
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=(
            "Count params (every convention) and GFLOPs (every scope) of the paper's Table 4 models at 640x512 and "
            'compare each row with the paper in the convention and scope it was printed in. Rows whose model is '
            'not registered yet are reported as MISSING: listed loudly, not measured, and they do not fail the run. '
            f'Writes {JSON_NAME} and {MD_NAME}.'
        ),
        epilog='exit status: 0 when every measured row reproduces the paper, 1 when one does not, 2 for usage errors.',
    )
    parser.add_argument(
        '--out-dir', type=Path, default=DEFAULT_OUT_DIR, help=f'where to write the results (default: {DEFAULT_OUT_DIR})'
    )
    parser.add_argument('--no-write', action='store_true', help='print only, write no files')
    parser.add_argument(
        '--speed',
        action='store_true',
        help='run the speed/memory benchmark instead (benchmarks/speed.py; options: bh-models benchmark --speed -h)',
    )
    parser.add_argument('--models', nargs='+', choices=names, metavar='MODEL', help=f'a subset of: {" ".join(names)}')
    parser.add_argument('--json', action='store_true', help='print the JSON report to stdout instead of the tables')
    parser.add_argument(
        '--device',
        choices=('auto', 'cuda', 'cpu', 'meta'),
        default='auto',
        help=(
            'where to run the counting forward pass. auto (default): cuda when available, else cpu. meta: shapes '
            'only, no arithmetic; ptflops reads only shapes, so the counts are identical (the tests check this) '
            'and take seconds instead of tens of seconds of CPU convolutions.'
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every measured row matches the paper, 1 otherwise (missing rows do not count)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--speed' in argv:  # `bh-models benchmark --speed [options]`: the speed/memory benchmark
        from benchmarks import speed

        return speed.main([str(a) for a in argv if a != '--speed'])
    args = _parser().parse_args([str(a) for a in argv])
    device = _pick_device(args.device)
    command_args = (['--models', *args.models] if args.models else []) + (
        ['--device', args.device] if args.device != 'auto' else []
    )
    command = ' '.join([COMMAND, *(shlex.quote(a) for a in command_args)])
    report = build_report(run_table(args.models, device), device, command)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    if not args.no_write:
        paths = write_report(report, args.out_dir)
        print(f'wrote {paths[0]} and {paths[1]}', file=sys.stderr if args.json else sys.stdout)
    return 1 if report['summary']['failed'] else 0


if __name__ == '__main__':
    raise SystemExit(main())
