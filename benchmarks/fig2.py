"""The paper's Fig. 2 (share of FLOPs per stage), regenerated, next to the share of latency per stage.

Stages are the five pieces every Table 4 backbone is made of (``STAGES``): the stem, then stages 1-4. For ResNets
stage k is ``layer{k}``; for HRNets stage 1 is ``layer1`` (after the BH stem's max-pool) and stage k = 2..4 is
``transition{k-1}`` + ``stage{k}``. The head (ResNet avg-pool + fc) is not a stage: the shares are of the trunk.

* **FLOPs per stage** come from the package's one counter, ``bh_models.complexity.count_flops_for_input``
  (ptflops, MMCV 1.x convention), applied to the trunk cut after each stage: stage k's FLOPs are
  ``count(stem..stage k) - count(stem..stage k-1)``. Counted on the meta device (shapes only, the same counts); the
  five stages add up to the trunk's Table 4 count.
* **Latency per stage** runs the same pieces one after the other on a real input and times each (median over
  rounds, after a warm-up), in eager mode.

``plot_fig2`` draws both, one row per Table 4 pair, from the ``stages`` entries of the speed benchmark's report
(``benchmarks/speed.py`` calls it; ``bh-models benchmark --speed`` writes ``fig2_<device>.png``).
"""

from __future__ import annotations

import statistics
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bh_models.complexity import build_for_scope, count_flops_for_input, model_family

__all__ = ['STAGES', 'StagePrefix', 'plot_fig2', 'stage_flops', 'stage_latency_ms', 'stage_pieces']

STAGES: tuple[str, ...] = ('stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4')

Piece = Callable[[Any], Any]


def _trunk(model: nn.Module) -> nn.Module:
    return getattr(model, 'net', model)  # a BackboneTrunk's network, or the model itself


def _hrnet_stem(net: nn.Module) -> Piece:
    if hasattr(net, 'forward_stem'):  # the BH-HRNets (input checks included)
        return net.forward_stem
    return lambda x: net.act2(net.bn2(net.conv2(net.act1(net.bn1(net.conv1(x))))))


def _transition_first(transition: nn.ModuleList, stage: nn.Module) -> Piece:
    return lambda x: stage([t(x) for t in transition])


def _transition_next(transition: nn.ModuleList, stage: nn.Module) -> Piece:
    from bh_models.hrnet import next_branches

    return lambda yl: stage(next_branches(transition, yl))


def stage_pieces(model: nn.Module) -> list[Piece]:
    """The five pieces (``STAGES``) of a Table 4 trunk, each a callable on the previous piece's output.

    Works on a timm/BH ResNet or HRNet, a classifier or a ``BackboneTrunk``; the pieces are the modules' own calls
    (the ResNet stem is ``conv1 -> bn1 -> act1 -> maxpool``; the BH-HRNet stem is ``forward_stem``, its max-pool
    starts stage 1 as in ``BHHighResolutionNet.stages``).
    """
    net = _trunk(model)
    if model_family(net) == 'resnet':
        return [
            lambda x: net.maxpool(net.act1(net.bn1(net.conv1(x)))),
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        ]
    maxpool = getattr(net, 'maxpool', nn.Identity())
    return [
        _hrnet_stem(net),
        lambda x: net.layer1(maxpool(x)),
        _transition_first(net.transition1, net.stage2),
        _transition_next(net.transition2, net.stage3),
        _transition_next(net.transition3, net.stage4),
    ]


class StagePrefix(nn.Module):
    """The trunk of ``model`` cut after stage ``last`` (0 = stem): what ``stage_flops`` counts.

    Args:
        model: A model ``stage_pieces`` accepts (held as a submodule, so ptflops sees its layers).
        last: Index into ``STAGES`` of the last piece to run.
    """

    def __init__(self, model: nn.Module, last: int) -> None:
        super().__init__()
        self.model = model
        self.last = last

    def forward(self, x: torch.Tensor) -> Any:
        """Run the pieces up to and including ``last``."""
        for piece in stage_pieces(self.model)[: self.last + 1]:
            x = piece(x)
        return x


def stage_flops(name: str, input_size_hw: Sequence[int]) -> list[int]:
    """FLOPs (``bh_models.complexity`` convention) of each of the five stages of ``name``'s trunk, one image.

    Counted with ``count_flops_for_input`` on cumulative prefixes (meta device), so the list sums to the trunk's
    count (``count_flops(build_for_scope(name, 'backbone'))``).
    """
    model = build_for_scope(name, 'backbone', device='meta')
    height, width = (int(v) for v in input_size_hw)
    cumulative = [count_flops_for_input(StagePrefix(model, k), (3, height, width)) for k in range(len(STAGES))]
    return [cumulative[0]] + [b - a for a, b in zip(cumulative, cumulative[1:], strict=False)]


def stage_latency_ms(
    model: nn.Module, x: torch.Tensor, rounds: int = 3, warmup: int = 1, channels_last: bool = False
) -> list[float]:
    """Median eager latency (ms) of each stage of ``model`` on ``x``, pieces run in order and timed one by one.

    Args:
        model: An eval-mode model that ``stage_pieces`` accepts, on ``x``'s device.
        x: The input batch.
        rounds: Timed passes; the median per stage is returned.
        warmup: Untimed passes first.
        channels_last: Convert ``x`` (the model must already be converted) to channels_last.
    """
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    pieces = stage_pieces(model)
    times: list[list[float]] = [[] for _ in pieces]
    with torch.inference_mode():
        for step in range(warmup + rounds):
            y = x
            for i, piece in enumerate(pieces):
                sync()
                start = time.perf_counter()
                y = piece(y)
                sync()
                if step >= warmup:
                    times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def _shares(values: Sequence[float]) -> list[float]:
    total = float(sum(values))
    return [v / total if total else 0.0 for v in values]


def plot_fig2(pairs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Write the Fig. 2 chart: per pair, share of FLOPs per stage and share of latency per stage, standard vs BH.

    Args:
        pairs: The speed report's ``pairs`` entries, each with a ``stages`` dict holding, per model role
            (``'standard'``, ``'bh'``), ``flops`` (list of 5) and ``latency_ms`` (list of 5).
        path: The PNG to write.
        title: Figure title (device, input size, variant timed).
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [p for p in pairs if p.get('stages')]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.2 * len(rows)), squeeze=False)
    width = 0.38
    positions = range(len(STAGES))
    for row, pair in zip(axes, rows, strict=True):
        for ax, key, what in ((row[0], 'flops', 'share of FLOPs'), (row[1], 'latency_ms', 'share of latency')):
            for offset, role, color in ((-width / 2, 'standard', '#7f7f7f'), (width / 2, 'bh', '#d62728')):
                shares = _shares(pair['stages'][role][key])
                bars = ax.bar([p + offset for p in positions], [100 * s for s in shares], width, color=color)
                ax.bar_label(bars, fmt='%.0f', fontsize=7)
                bars.set_label(pair['labels'][role])
            ax.set_xticks(list(positions), STAGES)
            ax.set_ylabel(f'{what} (%)')
            ax.set_title(f'{pair["labels"]["standard"]} vs {pair["labels"]["bh"]}: {what} per stage', fontsize=9)
            ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 120), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
