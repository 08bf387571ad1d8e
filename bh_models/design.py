"""Reconstruct the BH-HRNet layouts that the paper leaves open: ``bh-models design hrnet``.

Table 4 of the paper prints, for BH-HRNet18/32, the stem, the widths and only the deepest (lowest-resolution)
branch of stages 2-4, plus the parameter count and GFLOPs at 640x512. This module enumerates every HRNet layout
allowed by an explicit rule, costs each one, and ranks them against Table 4.

The rule (``RULE`` below, printed by the tool):

1. Fixed by the paper: the BH stem (3x3/1 conv 64, 3x3/2 conv 64, 3x3/2 max-pool), the standard widths
   (w, 2w, 4w, 8w), Bottlenecks (64 -> 256) in stage 1 and BasicBlocks in stages 2-4, timm's HRNet module structure
   (transitions, fuse layers, all modules of a stage alike).
2. Fixed by Table 4: the deepest branch's printed repeat count = ``num_modules * blocks of the last branch`` (that
   is how HRNet32's "x4, x16, x12" reads in timm: 1x4, 4x4, 3x4): BH-HRNet32 (4, 8, 3), BH-HRNet18 (4, 12, 6).
3. Bottom-heavy: within each stage, blocks are non-increasing from the highest- to the lowest-resolution branch.
4. Free, in an explicit search space (``SearchSpace``): stage-1 Bottlenecks 1..16, modules 1..4 per stage (they must
   divide the printed repeat count), blocks 1..8 per branch.
5. Accepted: within ``bh_models.paper.TABLE4``'s tolerances (0.5 % params, 0.2 % GFLOPs).
6. Ranked by: (a) distance of the module counts to standard HRNet's (1, 4, 3) for stages 2-4 (sum of absolute
   differences), then (b) the tolerance-normalised error ``max(|dP|/tol_P, |dF|/tol_F)``, then (c) the block
   distance to standard HRNet (sum of ``|blocks - 4|`` over every branch entry of stages 2-4), then (d) the layout
   tuple. (c) only separates layouts of identical cost: a BasicBlock of one branch costs the same in every stage, so
   moving blocks of a branch between stages (keeping ``sum num_modules * blocks``) changes nothing in Table 4.
   Candidates outside the tolerances rank after all accepted ones.

Costs follow ``bh_models.paper``: params = every parameter of the trunk (stem, layer1, transitions, stages; no head,
no ``incre`` modules), GFLOPs = ptflops' pytorch backend with ``count_functional=False`` (MMCV 1.x) for one image.
The cost of a layout is additive: stem + first and further Bottlenecks + transitions + per stage
``num_modules * (fuse layers + sum of blocks * block cost per branch)``. Each term is measured once with ptflops on
real timm modules (taken from a small probe network), so the search is a sum over arrays, and the winner is then
built and counted end to end, which must give the same numbers.
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.models.hrnet import HighResolutionNet, cfg_cls
from torch import nn

from .complexity import count_flops_for_input
from .hrnet import BH_HRNET_CFGS, BHHighResolutionNetFeatures, bh_hrnet_cfg, next_branches
from .paper import INPUT_SIZE_HW, TABLE4, Table4Row

__all__ = [
    'DEEPEST',
    'RULE',
    'STANDARD_BLOCKS',
    'STANDARD_MODULES',
    'WIDTHS',
    'Candidate',
    'CostModel',
    'Layout',
    'SearchResult',
    'SearchSpace',
    'cost_model',
    'count_trunk',
    'layout_from_cfg',
    'main',
    'search',
    'verify',
]

# Table 4's deepest-branch repeat counts of stages 2-4 (num_modules * blocks of the last branch)
DEEPEST: dict[str, tuple[int, int, int]] = {'bh_hrnet_w32': (4, 8, 3), 'bh_hrnet_w18': (4, 12, 6)}
WIDTHS: dict[str, int] = {'bh_hrnet_w32': 32, 'bh_hrnet_w18': 18}
STANDARD_MODULES = (1, 4, 3)  # HRNet-W18/W32 num_modules of stages 2-4
STANDARD_BLOCKS = 4  # HRNet-W18/W32 blocks per branch
RULE = """\
rule: BH stem and widths w/2w/4w/8w fixed (paper); deepest branch of stages 2-4 repeats num_modules x blocks =
      Table 4's count; blocks non-increasing from the highest- to the lowest-resolution branch (bottom-heavy);
      free: stage-1 Bottlenecks {layer1}, modules {modules} per stage (dividing the printed count),
      blocks {blocks} per branch; accepted within Table 4's tolerances (params {tol_p}, GFLOPs {tol_f});
      ranked by module-count distance to HRNet's (1, 4, 3), then max(|dP|/tol_P, |dF|/tol_F), then (for layouts
      of identical cost) the distance of the blocks to HRNet's 4 per branch, then the layout tuple."""


@dataclass(frozen=True)
class SearchSpace:
    """The free choices of the search (rule, item 4)."""

    layer1: range = range(1, 17)
    modules: range = range(1, 5)
    blocks: range = range(1, 9)


@dataclass(frozen=True, order=True)
class Layout:
    """A BH-HRNet layout: stage-1 Bottlenecks and ``(num_modules, blocks per branch)`` of stages 2-4."""

    width: int
    layer1: int
    stages: tuple[tuple[int, tuple[int, ...]], ...]

    def cfg(self) -> dict:
        """The timm ``cfg_cls``-style config."""
        return bh_hrnet_cfg(self.width, self.layer1, *self.stages)

    @property
    def deepest(self) -> tuple[int, ...]:
        """Table 4's deepest-branch repeat count of each stage."""
        return tuple(m * blocks[-1] for m, blocks in self.stages)

    @property
    def module_distance(self) -> int:
        """Sum of |num_modules - standard HRNet's| over stages 2-4."""
        return sum(abs(m - s) for (m, _), s in zip(self.stages, STANDARD_MODULES, strict=True))

    @property
    def block_distance(self) -> int:
        """Sum of |blocks - standard HRNet's 4| over every branch entry of stages 2-4."""
        return sum(abs(b - STANDARD_BLOCKS) for _, blocks in self.stages for b in blocks)

    def __str__(self) -> str:
        stages = ' | '.join(
            f's{i} {m}x({",".join(map(str, blocks))})' for i, (m, blocks) in enumerate(self.stages, start=2)
        )
        return f'layer1 {self.layer1} | {stages}'


def layout_from_cfg(cfg: dict) -> Layout:
    """The ``Layout`` of a timm ``cfg_cls``-style HRNet config."""
    stages = tuple((cfg[f'stage{s}']['num_modules'], tuple(cfg[f'stage{s}']['num_blocks'])) for s in (2, 3, 4))
    return Layout(cfg['stage2']['num_channels'][0], cfg['stage1']['num_blocks'][0], stages)


# --- counting -------------------------------------------------------------------------------------------------


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _Probe(nn.Module):
    """Runs ``module`` on zero inputs of fixed shapes (a tensor, or a list for an HRNet module/transition).

    ptflops feeds one tensor and takes the batch size from it; this wrapper takes a dummy ``(1, 1)`` input so that
    list inputs do not confuse its batch counter, and makes the real inputs inside (not counted).
    """

    def __init__(self, module: nn.Module, shapes: Sequence, apply: Callable | None = None) -> None:
        super().__init__()
        self.module = module
        self.shapes = shapes
        self.apply_fn = apply

    def forward(self, _: torch.Tensor):
        if isinstance(self.shapes[0], int):
            x = torch.zeros(1, *self.shapes)
        else:
            x = [torch.zeros(1, *s) for s in self.shapes]
        return self.apply_fn(self.module, x) if self.apply_fn else self.module(x)


def _cost(module: nn.Module, shapes: Sequence, apply: Callable | None = None) -> tuple[int, int]:
    return _num_params(module), count_flops_for_input(_Probe(module, shapes, apply), (1,))


def count_trunk(model: nn.Module, input_hw: tuple[int, int] = INPUT_SIZE_HW) -> tuple[int, int]:
    """(params, FLOPs) of an HRNet trunk end to end: ``model`` is a features model built with
    ``feature_location=''`` (timm's or ours), so it holds exactly the stem, layer1, transitions and stages."""
    if getattr(model, 'incre_modules', None) is not None:
        raise ValueError("count the trunk on a features_only model built with feature_location=''")
    return _num_params(model), count_flops_for_input(model, (3, *input_hw))


@dataclass
class CostModel:
    """Per-component (params, FLOPs) of an HRNet of one width at one input size, measured once with ptflops.

    ``stem='bh'`` measures the BH stem, ``stem='hrnet'`` timm's standard one (to check the counting against the
    published HRNet numbers).
    """

    width: int
    input_hw: tuple[int, int] = INPUT_SIZE_HW
    stem: str = 'bh'
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        h, w = self.input_hw
        if h % 32 or w % 32:
            raise ValueError(f'input {h}x{w}: use multiples of 32 so every branch has an exact size')
        probe_cfg = bh_hrnet_cfg(self.width, 2, (1, (1, 1)), (1, (1, 1, 1)), (1, (1, 1, 1, 1)))
        if self.stem == 'bh':
            net = BHHighResolutionNetFeatures(probe_cfg, feature_location='')
            stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.conv2, net.bn2, net.act2, net.maxpool)
        elif self.stem == 'hrnet':
            net = HighResolutionNet(probe_cfg, head='')
            stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.conv2, net.bn2, net.act2)
        else:
            raise ValueError(f"stem must be 'bh' or 'hrnet', got {self.stem!r}")
        chans = [self.width * 2**i for i in range(4)]
        shapes = [(c, h // 2 ** (i + 2), w // 2 ** (i + 2)) for i, c in enumerate(chans)]
        parts = {
            'stem': _cost(stem, (3, h, w)),
            'layer1_first': _cost(net.layer1[0], (64, h // 4, w // 4)),
            'layer1_next': _cost(net.layer1[1], (256, h // 4, w // 4)),
            'transition1': _cost(net.transition1, [(256, h // 4, w // 4)], next_branches),
            'transition2': _cost(net.transition2, shapes[:2], next_branches),
            'transition3': _cost(net.transition3, shapes[:3], next_branches),
        }
        for i in range(4):
            parts[f'block{i}'] = _cost(net.stage4[0].branches[i][0], shapes[i])
        for n, stage in ((2, net.stage2), (3, net.stage3), (4, net.stage4)):
            params, flops = _cost(stage[0], shapes[:n])  # one module, one block per branch
            parts[f'fuse{n}'] = (
                params - sum(parts[f'block{i}'][0] for i in range(n)),
                flops - sum(parts[f'block{i}'][1] for i in range(n)),
            )
        self.parts = parts

    def fixed(self) -> np.ndarray:
        """Stem, first Bottleneck and transitions: (params, FLOPs)."""
        keys = ('stem', 'layer1_first', 'transition1', 'transition2', 'transition3')
        return np.sum([self.parts[k] for k in keys], axis=0, dtype=np.int64)

    def layer1(self, n: int) -> np.ndarray:
        """Stage 1 with ``n`` Bottlenecks, less the first one (counted in ``fixed``)."""
        return (n - 1) * np.asarray(self.parts['layer1_next'], dtype=np.int64)

    def stage(self, num_modules: int, blocks: Sequence[int]) -> np.ndarray:
        """A stage of ``num_modules`` modules with ``blocks`` BasicBlocks per branch."""
        per_module = np.asarray(self.parts[f'fuse{len(blocks)}'], dtype=np.int64)
        for i, b in enumerate(blocks):
            per_module = per_module + b * np.asarray(self.parts[f'block{i}'], dtype=np.int64)
        return num_modules * per_module

    def cost(self, layout: Layout) -> tuple[int, int]:
        """(params, FLOPs) of ``layout``."""
        total = self.fixed() + self.layer1(layout.layer1)
        for m, blocks in layout.stages:
            total = total + self.stage(m, blocks)
        return int(total[0]), int(total[1])


@functools.lru_cache(maxsize=8)
def cost_model(width: int, input_hw: tuple[int, int] = INPUT_SIZE_HW, stem: str = 'bh') -> CostModel:
    """The ``CostModel`` of ``width`` at ``input_hw``, measured once per process."""
    return CostModel(width, tuple(input_hw), stem)


# --- search ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A costed layout and how it compares with its Table 4 row."""

    layout: Layout
    params: int
    flops: int
    row: Table4Row

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def params_err(self) -> float:
        """Relative error of the parameter count (fraction)."""
        return self.params_m / self.row.params_m - 1

    @property
    def gflops_err(self) -> float:
        """Relative error of the GFLOPs (fraction)."""
        return self.gflops / self.row.gflops - 1

    @property
    def score(self) -> float:
        """Tolerance-normalised error: <= 1 means within both tolerances."""
        params = abs(self.params_m - self.row.params_m) / self.row.params_tol_m
        return max(params, abs(self.gflops - self.row.gflops) / self.row.gflops_tol)

    @property
    def accepted(self) -> bool:
        return self.row.params_ok(self.params_m) and self.row.gflops_ok(self.gflops)

    def rank_key(self) -> tuple:
        """The rule's ranking (item 6)."""
        return (not self.accepted, self.layout.module_distance, self.score, self.layout.block_distance, self.layout)


def _stage_options(num_branches: int, deepest: int, space: SearchSpace) -> list[tuple[int, tuple[int, ...]]]:
    options = []
    for m in space.modules:
        if deepest % m or deepest // m not in space.blocks:
            continue
        last = deepest // m
        upper = [b for b in space.blocks if b >= last]
        for higher in itertools.combinations_with_replacement(sorted(upper, reverse=True), num_branches - 1):
            options.append((m, (*higher, last)))  # combinations of a descending list are non-increasing
    return options


@dataclass
class SearchResult:
    """Every layout of the space, ranked; ``candidates`` holds the best ``keep`` of them."""

    model: str
    row: Table4Row
    enumerated: int
    accepted: int
    candidates: list[Candidate]
    cost_model: CostModel

    @property
    def winner(self) -> Candidate:
        return self.candidates[0]


def search(
    model: str,
    space: SearchSpace | None = None,
    costs: CostModel | None = None,
    keep: int = 50,
) -> SearchResult:
    """Enumerate the layouts of ``space`` for ``model`` ('bh_hrnet_w18' / 'bh_hrnet_w32') and rank them."""
    space = space or SearchSpace()
    row = next(r for r in TABLE4 if r.model == model)
    width = WIDTHS[model]
    cm = costs or cost_model(width)
    if cm.width != width or tuple(cm.input_hw) != tuple(INPUT_SIZE_HW) or cm.stem != 'bh':
        raise ValueError('the cost model must be the BH one for this width at the paper input size')
    options = [_stage_options(n, d, space) for n, d in zip((2, 3, 4), DEEPEST[model], strict=True)]
    for stage, opts in enumerate(options, start=2):
        if not opts:
            raise ValueError(f'the search space has no layout for stage {stage} of {model} (deepest x{DEEPEST[model]})')
    # costs per choice, (params, flops) along the last axis
    c1 = np.stack([cm.layer1(n) for n in space.layer1])
    cs = [np.stack([cm.stage(m, b) for m, b in opts]) for opts in options]
    total = (
        cm.fixed()
        + c1[:, None, None, None]
        + cs[0][None, :, None, None]
        + cs[1][None, None, :, None]
        + cs[2][None, None, None, :]
    )
    params_m, gflops = total[..., 0] / 1e6, total[..., 1] / 1e9
    norm = np.maximum(np.abs(params_m - row.params_m) / row.params_tol_m, np.abs(gflops - row.gflops) / row.gflops_tol)
    accepted = norm <= 1
    # pre-select by the rule's own keys: accepted first, then module distance, then the normalised error
    distance = np.zeros(total.shape[:-1], dtype=np.int64)
    for axis, opts in enumerate(options, start=1):
        d = np.array([abs(m - STANDARD_MODULES[axis - 1]) for m, _ in opts])
        shape = [1, 1, 1, 1]
        shape[axis] = len(opts)
        distance = distance + d.reshape(shape)
    keys = (norm.ravel(), distance.ravel(), ~accepted.ravel())
    order = np.lexsort(keys)
    n = min(keep, order.size)
    while n < order.size and all(k[order[n]] == k[order[n - 1]] for k in keys):
        n += 1  # keep every exact tie of the last kept one: the block distance decides among them
    order = order[:n]
    candidates = []
    for flat in order:
        i1, i2, i3, i4 = np.unravel_index(flat, norm.shape)
        layout = Layout(width, space.layer1[i1], (options[0][i2], options[1][i3], options[2][i4]))
        candidates.append(Candidate(layout, int(total[i1, i2, i3, i4, 0]), int(total[i1, i2, i3, i4, 1]), row))
    candidates.sort(key=Candidate.rank_key)
    return SearchResult(model, row, int(norm.size), int(accepted.sum()), candidates[:keep], cm)


def verify(candidate: Candidate, input_hw: tuple[int, int] = INPUT_SIZE_HW) -> tuple[int, int]:
    """Build ``candidate``'s real trunk and count it end to end (params, FLOPs)."""
    model = BHHighResolutionNetFeatures(candidate.layout.cfg(), feature_location='')
    return count_trunk(model, input_hw)


# --- CLI ------------------------------------------------------------------------------------------------------


def _fmt_pct(x: float) -> str:
    return f'{100 * x:+.3f}%'


def _print_result(result: SearchResult, top: int) -> None:
    row = result.row
    deepest = 'x' + ', x'.join(map(str, DEEPEST[result.model]))
    print(f'\n{row.label} ({result.model}): paper {row.params_m:.2f} M, {row.gflops:.2f} GFLOPs, deepest {deepest}')
    print(f'  {result.enumerated} layouts enumerated, {result.accepted} within tolerance; the best {top}:')
    print(f'  {"#":>2}  {"layout":<58} {"params M":>9} {"dP":>8} {"GFLOPs":>8} {"dF":>8} {"mod.d":>5} {"err":>5}')
    for i, c in enumerate(result.candidates[:top], start=1):
        mark = '' if c.accepted else '  (outside tolerance)'
        print(
            f'  {i:>2}  {str(c.layout):<58} {c.params_m:>9.4f} {_fmt_pct(c.params_err):>8} {c.gflops:>8.3f} '
            f'{_fmt_pct(c.gflops_err):>8} {c.layout.module_distance:>5} {c.score:>5.2f}{mark}'
        )


def _rule_text(space: SearchSpace) -> str:
    def span(r: range) -> str:
        return f'{r.start}..{r.stop - 1}'

    row = next(r for r in TABLE4 if r.model == 'bh_hrnet_w32')
    return RULE.format(
        layer1=span(space.layer1),
        modules=span(space.modules),
        blocks=span(space.blocks),
        tol_p=f'{100 * row.params_tol_m / row.params_m:.1f}%',
        tol_f=f'{100 * row.gflops_tol / row.gflops:.1f}%',
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``bh-models design hrnet``: print the rule, the ranked candidates and the check of the winners."""
    parser = argparse.ArgumentParser(
        prog='bh-models design', description='Reconstruct the BH-HRNet layouts against Table 4 of the paper.'
    )
    parser.add_argument('family', choices=['hrnet'], help='the family to reconstruct')
    parser.add_argument('--model', choices=sorted(DEEPEST), action='append', help='only these (default: both)')
    parser.add_argument('--top', type=int, default=10, help='candidates to print per model (default 10)')
    parser.add_argument('--layer1-max', type=int, default=16, help='largest stage-1 Bottleneck count (default 16)')
    parser.add_argument('--modules-max', type=int, default=4, help='largest num_modules per stage (default 4)')
    parser.add_argument('--blocks-max', type=int, default=8, help='largest blocks per branch (default 8)')
    parser.add_argument('--no-verify', action='store_true', help='skip building and counting the winners')
    args = parser.parse_args(argv)
    space = SearchSpace(range(1, args.layer1_max + 1), range(1, args.modules_max + 1), range(1, args.blocks_max + 1))
    print(_rule_text(space))
    h, w = INPUT_SIZE_HW
    print(f'counting: params = all trunk parameters; GFLOPs = ptflops pytorch, count_functional=False, 1x3x{h}x{w}')
    for std in ('hrnet_w18', 'hrnet_w32'):
        width = cfg_cls[std]['stage2']['num_channels'][0]
        params, flops = cost_model(width, stem='hrnet').cost(layout_from_cfg(cfg_cls[std]))
        print(f'calibration: timm {std} trunk (analytic) {params / 1e6:.3f} M, {flops / 1e9:.3f} GFLOPs')
    status = 0
    for model in args.model or sorted(DEEPEST, key=lambda m: WIDTHS[m]):
        result = search(model, space, keep=max(args.top, 1))
        _print_result(result, args.top)
        win = result.winner
        registered = layout_from_cfg(BH_HRNET_CFGS[model])
        same = 'yes' if registered == win.layout else f'NO (registry has {registered})'
        print(f'  winner: {win.layout}; registered in bh_models.hrnet: {same}')
        if not win.accepted:
            print('  no layout of the space is within tolerance')
            status = 1
        if not args.no_verify:
            params, flops = verify(win)
            ok = (params, flops) == (win.params, win.flops)
            verdict = '= the analytic sum' if ok else 'DIFFERS from the analytic sum'
            print(f'  built and counted end to end: {params / 1e6:.4f} M, {flops / 1e9:.4f} GFLOPs ({verdict})')
            status = status or int(not ok)
    return status


if __name__ == '__main__':
    raise SystemExit(main())
