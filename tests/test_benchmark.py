"""The Table 4 benchmark (benchmarks/paper_table.py): exit status, MISSING rows, JSON/Markdown files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import paper_table
from bh_models.paper import TABLE4, Table4Row

STANDARD = ('resnet50', 'bh_resnet50', 'hrnet_w32', 'hrnet_w18')
GHOST = Table4Row('Ghost-Net', 'bh_ghost_net_w0', 1.0, 1.0, 'all', 'backbone')  # never registered


def _md_comparison(md: str) -> dict[str, list[str]]:
    """The 'Against the paper' table of table4.md as {model: cells}."""
    section = md.split('## Against the paper')[1].split('\n## ')[0]
    lines = [line for line in section.splitlines() if line.startswith('| ') and not line.startswith('| label')]
    cells = [[c.strip() for c in line.strip('|').split(' | ')] for line in lines]
    return {c[1]: c for c in cells}


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
    """Every Table 4 row, counted on the meta device (same counts as the CPU, see test_complexity, in seconds)."""
    out_dir = tmp_path_factory.mktemp('results')
    rc = paper_table.main(['--out-dir', str(out_dir), '--device', 'meta'])
    report = json.loads((out_dir / 'table4.json').read_text())
    return rc, report, (out_dir / 'table4.md').read_text()


def test_full_run_writes_consistent_files(full_run):
    rc, report, md = full_run
    assert [r['model'] for r in report['rows']] == [row.model for row in TABLE4]
    assert rc == (1 if report['summary']['failed'] else 0)
    for key in ('command', 'date', 'device', 'versions', 'input_size_hw', 'units'):
        assert report[key], key
    assert report['command'] == 'bh-models benchmark --device meta'
    assert report['input_size_hw'] == [512, 640]
    assert set(report['versions']) >= {'torch', 'timm', 'ptflops'}
    assert report['device'] in md and report['date'] in md and '`bh-models benchmark --device meta`' in md
    table = _md_comparison(md)
    for row in report['rows']:
        cells = table[row['model']]
        assert cells[-1] == row['status']
        if row['status'] != 'MISSING':
            assert cells[4] == f'{row["params_m"]:.3f}' and cells[9] == f'{row["gflops"]:.3f}'
            assert row['params_m'] == row['params_m_by_convention'][row['param_convention']]
            assert row['gflops'] == row['gflops_by_scope'][row['flops_scope']]


def test_standard_rows_pass(full_run):
    _, report, _ = full_run
    rows = {r['model']: r for r in report['rows']}
    for name in STANDARD:
        assert rows[name]['status'] == 'ok', rows[name]
    assert rows['resnet50']['gflops_reproduced_by'] == ['backbone+head']
    assert 'needs backbone+head' in rows['resnet50']['note']


def test_committed_results_are_current(full_run):
    """benchmarks/results/table4.json holds the counts the models give today (regenerate: `bh-models benchmark`)."""
    committed_path = paper_table.DEFAULT_OUT_DIR / paper_table.JSON_NAME
    if not committed_path.exists():
        pytest.skip(f'{committed_path} not generated yet')
    committed = json.loads(committed_path.read_text())
    _, fresh, _ = full_run

    def counts(report):
        keys = ('status', 'params_by_convention', 'flops_by_scope')
        return {r['model']: {k: r.get(k) for k in keys} for r in report['rows']}

    assert counts(committed) == counts(fresh), 'benchmarks/results is stale: rerun `bh-models benchmark`'


def test_missing_rows_are_reported_and_do_not_fail(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paper_table, 'TABLE4', (*TABLE4, GHOST))
    rc = paper_table.main(['--out-dir', str(tmp_path), '--models', 'resnet50', GHOST.model])
    out = capsys.readouterr().out
    assert rc == 0
    assert f'MISSING: Ghost-Net ({GHOST.model}) is not registered in timm' in out
    assert '1 missing' in out
    report = json.loads((tmp_path / 'table4.json').read_text())
    assert [r['status'] for r in report['rows']] == ['ok', 'MISSING']
    assert report['summary']['missing'] == [GHOST.model]
    md = (tmp_path / 'table4.md').read_text()
    assert '## Missing rows' in md and GHOST.model in md
    assert report['command'] == f'bh-models benchmark --models resnet50 {GHOST.model}'


def test_a_row_off_the_paper_fails_the_run(tmp_path, monkeypatch):
    wrong = Table4Row('ResNet50 (wrong scope)', 'resnet50', 23.23, 26.91, 'conv_trainable_frozen1', 'backbone')
    monkeypatch.setattr(paper_table, 'TABLE4', (wrong,))
    assert paper_table.main(['--no-write', '--out-dir', str(tmp_path)]) == 1
    assert not list(tmp_path.iterdir())


def test_console_script(tmp_path):
    """``bh-models benchmark`` through the installed console script, JSON on stdout, nothing written."""
    script = Path(sys.executable).parent / 'bh-models'
    proc = subprocess.run(
        [str(script), 'benchmark', '--models', 'resnet50', '--json', '--no-write', '--out-dir', str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [r['status'] for r in report['rows']] == ['ok']
    assert report['rows'][0]['gflops_by_scope']['backbone'] == pytest.approx(26.905, abs=1e-3)
    assert not list(tmp_path.iterdir())


def test_help_says_missing_rows_do_not_fail(capsys):
    with pytest.raises(SystemExit) as exc:
        paper_table.main(['--help'])
    assert exc.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())
    assert 'MISSING' in text and 'do not fail the run' in text
