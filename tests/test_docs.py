"""The README's numbers and commands are the ones this repository produces."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import timm

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text()
RESULTS = REPO / 'benchmarks' / 'results'


def _committed_table(name: str, header: str, after: str = '') -> str:
    """The one table of ``benchmarks/results/<name>`` that starts with ``header`` (in the part after ``after``)."""
    md = (RESULTS / name).read_text()
    if after:
        md = md.split(after, 1)[1]
    tables = [block for block in md.split('\n\n') if block.startswith(header)]
    assert len(tables) == 1, f'{name}: {len(tables)} tables start with {header!r}'
    return tables[0]


def _quick_start_commands() -> list[str]:
    section = README.split('## Quick start', 1)[1].split('\n## ', 1)[0]
    block = section.split('```', 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip()]


def test_quick_start_has_exactly_two_commands():
    install_and_benchmark, install_and_test = _quick_start_commands()
    assert install_and_benchmark.endswith('bh-models benchmark') and 'pip install -e .' in install_and_benchmark
    assert '.[test' in install_and_test and install_and_test.endswith('pytest')


def test_ci_runs_the_readme_test_command():
    """.ci/run extracts its command from the README, so the two cannot drift."""
    script = (REPO / '.ci' / 'run').read_text()
    assert 'set -euo pipefail' in script and 'README.md' in script
    extract = script.split('cmd=$(', 1)[1].split("' README.md)", 1)[0] + "' README.md"
    out = subprocess.run(['bash', '-c', extract], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == _quick_start_commands()[1]


def test_benchmark_table_in_readme_is_the_committed_result():
    table = _committed_table('table4.md', '| label |', after='## Against the paper')
    assert table in README, 'README benchmark table differs from benchmarks/results/table4.md: paste the new one'


def test_models_table_numbers_are_the_benchmark_numbers():
    rows = {r['model']: r for r in json.loads((RESULTS / 'table4.json').read_text())['rows']}
    section = README.split('## Models', 1)[1].split('\n## ', 1)[0]
    listed = re.findall(r'^\| `(bh_\w+)` \| [^|]+ \| ([\d.]+) \| ([\d.]+)', section, flags=re.M)
    assert sorted(name for name, _, _ in listed) == sorted(timm.list_models('bh_*'))
    for name, params, gflops in listed:
        assert params == f'{rows[name]["params_m_by_convention"]["all"]:.3f}', name
        assert gflops == f'{rows[name]["gflops_by_scope"]["backbone"]:.3f}', name


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_speed_targets_in_readme_are_the_committed_results(device):
    """The README's speed targets are the tables of benchmarks/results/speed_<device>.md."""
    table = _committed_table(f'speed_{device}.md', '| target |', after='## Targets (reported, not asserted)')
    assert table in README, f'README speed targets differ from benchmarks/results/speed_{device}.md: paste the new ones'


def test_pretrain_comparison_in_readme_is_the_committed_result():
    """The README's Table 5 comparison is the summary table of benchmarks/results/pretrain_fmnist.md."""
    table = _committed_table('pretrain_fmnist.md', '| model | runs |')
    assert table in README, 'README pre-training comparison differs from benchmarks/results/pretrain_fmnist.md'
