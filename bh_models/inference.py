"""A fast inference path for any timm-style CNN: ``optimize_for_inference(model, example_input)``.

What it does, in order, on a copy of the model (the model passed in is not modified):

1. **eval mode**, no gradients.
2. **BatchNorm folded into the preceding convolution**: the model is traced with ``torch.fx`` (convolutions and
   BatchNorms as leaf modules, plus timm's own no-trace modules and functions) to find every ``Conv -> BatchNorm``
   edge where the convolution's output feeds nothing else; each pair is folded with torch's
   ``torch.nn.utils.fusion.fuse_conv_bn_weights`` into the convolution's weight and bias, and the BatchNorm
   becomes ``nn.Identity`` (timm's ``BatchNormAct2d`` becomes its drop + activation). The modules keep their
   types, so ``bh_models.layers.GuardedConv2d`` (the BH stem) is folded like any ``nn.Conv2d`` and keeps its
   input check.
3. **a tiled stem** (CPU): a stem whose first convolution has stride 1 (the BH stems: 64 channels at the full
   640x512 resolution, 84 MB per image in float32) is computed in horizontal strips together with the strided
   layer that reads it (``StripTiledStem``), so that full-resolution tensor is never materialised. On a CPU it
   would not fit any cache, and above glibc's 32 MB mmap threshold it is page-faulted afresh on every call: that,
   not the arithmetic, is most of why an eager BH stem is slow. Each output element is computed from the same
   inputs and weights as before.
4. **channels_last** weights and input.
5. **the backend**, chosen by measurement (``backend='auto'``) among the candidates the platform offers
   (``default_candidates``; ``+tiled`` marks a candidate with the tiled stem of step 3):

   * ``'eager'``: the folded channels_last module as it is (oneDNN/MKLDNN convolutions on CPU, cuDNN on CUDA);
   * ``'jit'``: ``torch.jit.trace`` -> ``torch.jit.freeze`` -> ``torch.jit.optimize_for_inference`` (on CPU this
     converts the graph to MKLDNN tensors and fuses convolution + activation); one trace per input shape;
   * ``'inductor'``: ``torch.compile(..., options={'freezing': True})`` (weights become constants, convolutions
     get their pointwise ops fused; needs a working C++ compiler on CPU, Triton on CUDA); compiles per shape.

   Every candidate is built, checked against the eager model on ``example_input`` and timed there (median of
   ``repeats`` calls after one warm-up); the fastest that passes wins. A candidate that fails to build or to match
   is skipped, and the reason is kept in ``OptimizedModel.candidates``.

The result is checked to equal the eager model within ``rtol`` (default 1e-4) relative to each output's scale:
``max|optimized - eager| <= rtol * max|eager|`` for every output tensor; otherwise ``optimize_for_inference`` raises.
Outputs keep the eager model's structure (a tensor, or a list of tensors for HRNets and ``features_only`` models).
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.utils._pytree import tree_leaves

__all__ = [
    'BACKENDS',
    'OptimizedModel',
    'available_backends',
    'default_candidates',
    'fold_batch_norms',
    'max_relative_error',
    'optimize_for_inference',
]

BACKENDS: tuple[str, ...] = ('eager', 'jit', 'inductor')


class _ConvBNTracer(torch.fx.Tracer):
    """``torch.fx`` tracer that keeps convolutions, BatchNorms and timm's no-trace modules as leaves."""

    def __init__(self) -> None:
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = (_ConvNd, _BatchNorm, *get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Convolutions (subclasses included) and BatchNorms are leaves, so the graph shows the modules by name."""
        return isinstance(m, self._leaves) or super().is_leaf_module(m, module_qualified_name)


def _bn_replacement(bn: _BatchNorm) -> nn.Module | None:
    """What a folded BatchNorm becomes: Identity, or the drop + act of timm's ``BatchNormAct2d``; None: not folded."""
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return nn.Identity()
    from timm.layers import BatchNormAct2d

    if type(bn) is BatchNormAct2d:
        return nn.Sequential(bn.drop, bn.act)
    return None  # an unknown BatchNorm subclass may do more than normalise: leave it


def _traced_calls(model: nn.Module) -> tuple[torch.fx.Graph, dict[str, nn.Module], dict[str, int]]:
    """The ``torch.fx`` graph of ``model``, its modules by name, and how often each module is called in it."""
    graph = _ConvBNTracer().trace(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == 'call_module':
            calls[node.target] = calls.get(node.target, 0) + 1
    return graph, dict(model.named_modules()), calls


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names of the ``(conv, bn)`` pairs that can be folded, found on the ``torch.fx`` graph."""
    graph, modules, calls = _traced_calls(model)
    pairs = []
    for node in graph.nodes:
        if node.op != 'call_module' or not isinstance(modules[node.target], _BatchNorm) or not node.args:
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == 'call_module'):
            continue
        conv, bn = modules[src.target], modules[node.target]
        if (
            isinstance(conv, _ConvNd)
            and len(src.users) == 1  # the conv output feeds the BN only
            and calls[src.target] == 1  # neither module is shared between two places of the graph
            and calls[node.target] == 1
            and bn.track_running_stats
            and bn.running_mean is not None
            and conv.out_channels == bn.num_features
            and _bn_replacement(bn) is not None
        ):
            pairs.append((src.target, node.target))
    return pairs


def fold_batch_norms(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm into the convolution before it, in place; returns the folded pairs.

    The pairs are found on a ``torch.fx`` trace (a convolution whose only consumer is the BatchNorm), folded with
    ``torch.nn.utils.fusion.fuse_conv_bn_weights``, and the BatchNorm is replaced by ``nn.Identity`` (or by the
    drop + activation of timm's ``BatchNormAct2d``). Convolution subclasses such as
    ``bh_models.layers.GuardedConv2d`` keep their type. The model must be in eval mode.

    Raises:
        RuntimeError: When the model is in training mode (folding uses the running statistics).
        torch.fx.proxy.TraceError: When the model cannot be traced symbolically (data-dependent control flow);
            call ``optimize_for_inference(..., fold_bn=False)`` for such a model.
    """
    if model.training:
        raise RuntimeError('fold_batch_norms needs model.eval(): folding uses the BatchNorm running statistics')
    pairs = _conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias, conv.transposed
        )
        parent, _, name = bn_name.rpartition('.')
        setattr(model.get_submodule(parent) if parent else model, name, _bn_replacement(bn))
    return pairs


# elementwise activations a tiled stem may apply between its convolution and its reducer
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Mish,
)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class StripTiledStem(nn.Module):
    """``reducer(act(conv(x)))`` computed in horizontal strips, for a stride-1 convolution at full resolution.

    The BH stems start with a stride-1 convolution whose output (64 channels at the input's full resolution, 84 MB
    per 640x512 image in float32) is read once by a stride-2 reducer (the max-pool of BH-ResNet, ``conv2`` of
    BH-HRNet). On a CPU that tensor overflows the per-core caches and, above glibc's 32 MB mmap threshold, is
    mapped and page-faulted afresh on every call. Here the reducer's output rows are produced a strip at a time
    (each strip's convolution output stays within ``budget_bytes``), so the full-resolution tensor never exists.
    Every output element is computed from the same inputs and weights as in the untiled network (the strips
    overlap by the reducer's receptive field; the padding at the image border is added explicitly), so the
    result equals the untiled one up to float summation order.

    Args:
        conv: The stride-1 convolution (BN already folded), zero padding.
        act: The elementwise activation after it.
        reducer: ``nn.MaxPool2d`` or ``nn.Conv2d`` reading the activation (any stride, zero padding for a conv).
        budget_bytes: Size of one strip of the convolution's output (kept under glibc's 32 MB mmap threshold, so
            strips reuse heap memory instead of faulting in fresh pages).
        max_strips: At most this many strips (large batches get taller strips than ``budget_bytes`` asks for).
    """

    def __init__(
        self, conv: nn.Conv2d, act: nn.Module, reducer: nn.Module, budget_bytes: int = 8 << 20, max_strips: int = 32
    ) -> None:
        super().__init__()
        self.conv, self.act, self.reducer = conv, act, reducer
        self.budget_bytes = budget_bytes
        self.max_strips = max_strips
        self.pool = isinstance(reducer, nn.MaxPool2d)
        self.kr, self.sr = _pair(reducer.kernel_size), _pair(reducer.stride or reducer.kernel_size)
        self.pr, self.dr = _pair(reducer.padding), _pair(reducer.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reducer's output, strip by strip (see the class docstring)."""
        conv = self.conv
        (kc, _), (pc, pcw), (dc, _) = conv.kernel_size, _pair(conv.padding), conv.dilation
        (kr, krw), (sr, srw), (pr, prw), (dr, drw) = self.kr, self.sr, self.pr, self.dr
        n, _, h, w = x.shape
        hc = h + 2 * pc - dc * (kc - 1)  # rows of the conv output (stride 1)
        wc = w + 2 * pcw - conv.dilation[1] * (conv.kernel_size[1] - 1)
        ho = (hc + 2 * pr - dr * (kr - 1) - 1) // sr + 1
        rows = max(
            self.budget_bytes // max(1, n * conv.out_channels * wc * x.element_size() * sr),
            -(-ho // self.max_strips),  # bounded strip count: a compiler unrolls the loop
            1,
        )
        fill = float('-inf') if self.pool else 0.0
        outs = []
        for o0 in range(0, ho, rows):
            o1 = min(ho, o0 + rows)
            a, b = o0 * sr - pr, (o1 - 1) * sr - pr + dr * (kr - 1) + 1  # conv rows the strip reads
            a_c, b_c = max(a, 0), min(b, hc)
            i0, i1 = a_c - pc, b_c - pc + dc * (kc - 1)  # input rows those conv rows read
            xs = F.pad(x[:, :, max(i0, 0) : min(i1, h)], (0, 0, max(0, -i0), max(0, i1 - h)))
            y = self.act(F.conv2d(xs, conv.weight, conv.bias, 1, (0, pcw), conv.dilation, conv.groups))
            if a_c > a or b > b_c:
                y = F.pad(y, (0, 0, a_c - a, b - b_c), value=fill)
            if self.pool:
                y = F.max_pool2d(y, (kr, krw), (sr, srw), (0, prw), (dr, drw))
            else:
                r = self.reducer
                y = F.conv2d(y, r.weight, r.bias, (sr, srw), (0, prw), (dr, drw), r.groups)
            outs.append(y)
        return outs[0] if len(outs) == 1 else torch.cat(outs, 2)


def _tileable(conv: nn.Module, act: nn.Module, reducer: nn.Module) -> bool:
    if not (isinstance(conv, nn.Conv2d) and conv.padding_mode == 'zeros' and _pair(conv.stride) == (1, 1)):
        return False
    if not isinstance(conv.padding, tuple) or not isinstance(act, _ELEMENTWISE):
        return False  # padding='same' / 'valid' strings: leave them
    if isinstance(reducer, nn.MaxPool2d):
        return not reducer.ceil_mode and not reducer.return_indices and _pair(reducer.stride or 1)[0] >= 2
    return (
        isinstance(reducer, nn.Conv2d)
        and reducer.padding_mode == 'zeros'
        and isinstance(reducer.padding, tuple)
        and _pair(reducer.stride)[0] >= 2
    )


def tile_stems(model: nn.Module) -> list[str]:
    """Replace a stem ``stride-1 conv -> activation -> strided reducer`` chain by a ``StripTiledStem``, in place.

    Only the convolution that reads the network input is considered (the BH stems; standard ResNet/HRNet stems
    have a strided first convolution and are left alone). Run after ``fold_batch_norms`` (the folded BatchNorms
    are ``nn.Identity`` and are skipped over). The chain is found on a ``torch.fx`` trace: every link must be the
    only consumer of the previous one and each module must be called once. The convolution's place gets the
    ``StripTiledStem``, the activation's and the reducer's get ``nn.Identity``. Returns the qualified names of the
    tiled convolutions.
    """
    graph, modules, calls = _traced_calls(model)

    def next_module(node: torch.fx.Node) -> torch.fx.Node | None:
        """The single consumer of ``node``, skipping Identity modules; None when it is not a single module call."""
        while True:
            if len(node.users) != 1:
                return None
            (user,) = node.users
            if user.op != 'call_module' or calls[user.target] != 1 or user.args[0] is not node:
                return None
            if not isinstance(modules[user.target], nn.Identity):
                return user
            node = user

    tiled = []
    for node in graph.nodes:
        if node.op != 'call_module' or calls[node.target] != 1 or not isinstance(modules[node.target], nn.Conv2d):
            continue
        if not (node.args and isinstance(node.args[0], torch.fx.Node) and node.args[0].op == 'placeholder'):
            continue  # stems only: the convolution that reads the network's input
        act_node = next_module(node)
        reducer_node = next_module(act_node) if act_node is not None else None
        if reducer_node is None:
            continue
        conv, act, reducer = (modules[n.target] for n in (node, act_node, reducer_node))
        if not _tileable(conv, act, reducer):
            continue
        for target, new in (
            (node.target, StripTiledStem(conv, act, reducer)),
            (act_node.target, nn.Identity()),
            (reducer_node.target, nn.Identity()),
        ):
            parent, _, name = target.rpartition('.')
            setattr(model.get_submodule(parent) if parent else model, name, new)
        tiled.append(node.target)
    return tiled


def max_relative_error(got: Any, expected: Any) -> float:
    """``max|got - expected| / max|expected|`` over the output tensors (lists, tuples, dicts: the worst one).

    Raises:
        ValueError: When the two outputs do not have the same structure or shapes.
    """
    got_leaves, expected_leaves = tree_leaves(got), tree_leaves(expected)
    if len(got_leaves) != len(expected_leaves):
        raise ValueError(f'outputs differ in structure: {len(got_leaves)} tensors vs {len(expected_leaves)} expected')
    worst = 0.0
    for a, b in zip(got_leaves, expected_leaves, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"output shape {tuple(a.shape)} differs from the eager model's {tuple(b.shape)}")
        scale = b.detach().abs().max().float().item() or 1.0
        worst = max(worst, (a.detach().float() - b.detach().float()).abs().max().item() / scale)
    return worst


def _compiler_works() -> bool:
    """True when inductor can build C++ on this machine (a quick compile of a tiny function)."""
    try:
        fn = torch.compile(lambda t: t * 2 + 1, backend='inductor', fullgraph=True)
        return bool(torch.equal(fn(torch.ones(3)), torch.full((3,), 3.0)))
    except Exception:  # any failure (no compiler, a broken toolchain) means: not available
        return False


_COMPILER_OK: dict[str, bool] = {}


def available_backends(device: torch.device | str = 'cpu') -> tuple[str, ...]:
    """The backends ``optimize_for_inference(backend='auto')`` tries on ``device``.

    ``'eager'`` and ``'jit'`` always; ``'inductor'`` when it can compile there (a C++ compiler on the CPU, Triton on
    CUDA; checked once per process with a tiny function).
    """
    kind = torch.device(device).type
    if kind not in _COMPILER_OK:
        if kind == 'cuda':
            try:
                import triton  # noqa: F401

                _COMPILER_OK[kind] = True
            except ImportError:
                _COMPILER_OK[kind] = False
        else:
            _COMPILER_OK[kind] = _compiler_works()
    return ('eager', 'jit', 'inductor') if _COMPILER_OK[kind] else ('eager', 'jit')


def _to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _jit(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch 2.14 deprecates torch.jit; the tracer warns about Python ints from shapes, which is why traces are
        # kept per input shape (see _Runner)
        warnings.simplefilter('ignore')
        with torch.no_grad():
            traced = torch.jit.trace(module, example, strict=False, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


class _Runner:
    """The callable of one backend around the prepared (folded, channels_last, eval) module.

    ``'jit'`` traces are specialised to the input they were traced with (a tiled stem unrolls its strips, shape
    arithmetic becomes constants), so one trace is kept per input shape, dtype and device and a new shape is traced
    on first use. ``'inductor'`` (``dynamic=False``) recompiles for a new shape by itself.
    """

    def __init__(self, backend: str, module: nn.Module) -> None:
        if backend not in BACKENDS:
            raise ValueError(f'unknown backend {backend!r}; use "auto" or one of {BACKENDS}')
        self.backend = backend
        self.module = module
        self.traces: dict[tuple[Any, ...], torch.jit.ScriptModule] = {}
        self.compiled = None
        if backend == 'inductor':
            # freezing: weights become constants, so inductor pre-packs them and fuses conv + pointwise ops
            self.compiled = torch.compile(module, backend='inductor', dynamic=False, options={'freezing': True})

    def __call__(self, x: torch.Tensor) -> Any:
        if self.backend == 'eager':
            return self.module(x)
        if self.compiled is not None:
            return self.compiled(x)
        key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled(x.device.type))
        if key not in self.traces:
            self.traces[key] = _jit(self.module, x)
        return self.traces[key](x)


def _median_ms(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn(x)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@dataclass
class Candidate:
    """One candidate tried by ``optimize_for_inference``: build time, latency on the example input, error, failure."""

    backend: str
    tiled: bool = False
    build_s: float = 0.0
    latency_ms: float | None = None
    max_rel_error: float | None = None
    error: str = ''

    @property
    def name(self) -> str:
        """``backend``, or ``backend+tiled`` with a tiled stem."""
        return self.backend + ('+tiled' if self.tiled else '')


class OptimizedModel(nn.Module):
    """The model returned by ``optimize_for_inference``: call it like the eager model (it runs under no-grad).

    Inputs may be NCHW or channels_last; they are converted as needed. Outputs have the eager model's structure and
    values (within the checked tolerance); their memory format may be channels_last.

    Attributes:
        module: The prepared eager module (BN folded, channels_last, stems tiled): weights, ``feature_info``, ...
        backend: The backend that runs it (``'eager'``, ``'jit'`` or ``'inductor'``).
        channels_last: Whether inputs are converted to channels_last.
        folded: ``(conv, bn)`` qualified names of the folded BatchNorms.
        tiled: Qualified names of the stem convolutions computed in strips (``StripTiledStem``).
        max_rel_error: Measured on the example input against the eager model (see ``max_relative_error``).
        candidates: Every backend tried, with build time, latency on the example input and error or failure.
    """

    def __init__(
        self,
        module: nn.Module,
        runner: _Runner,
        channels_last: bool,
        folded: list[tuple[str, str]],
        tiled: list[str],
        max_rel_error: float,
        candidates: list[Candidate],
    ) -> None:
        super().__init__()
        self.module = module
        object.__setattr__(self, '_runner', runner)  # not a registered submodule: no duplicate state-dict keys
        self.backend = runner.backend
        self.channels_last = channels_last
        self.folded = folded
        self.tiled = tiled
        self.max_rel_error = max_rel_error
        self.candidates = candidates

    def forward(self, x: torch.Tensor) -> Any:
        """Run the optimized model on ``x``."""
        with torch.no_grad():
            return self._runner(_to_memory_format(x, self.channels_last))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # feature_info, pretrained_cfg, num_features, ... of the wrapped model
            return getattr(super().__getattr__('module'), name)

    def extra_repr(self) -> str:
        """Backend, memory format, folded BatchNorms and tiled stems."""
        return (
            f'backend={self.backend!r}, channels_last={self.channels_last}, folded_bn={len(self.folded)}, '
            f'tiled={self.tiled}'
        )


def _default_input(model: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    size = cfg.get('input_size') if isinstance(cfg, dict) else None
    if not size or len(size) != 3:
        raise ValueError(
            f'cannot tell the input size of {type(model).__name__} (no pretrained_cfg["input_size"]); '
            'pass example_input=torch.randn(1, C, H, W) at the size you will run it'
        )
    return torch.randn(1, *size, device=device, dtype=dtype)


def default_candidates(device: torch.device | str = 'cpu') -> tuple[str, ...]:
    """What ``optimize_for_inference(backend='auto')`` tries on ``device``: backends, ``+tiled`` with a tiled stem.

    On the CPU: ``'eager'``, ``'eager+tiled'``, ``'jit'`` and ``'inductor+tiled'`` (when inductor compiles here).
    Measured on 2 Xeon cores at 640x512 (``bh-models benchmark --speed``), the tiled stem made eager BH-ResNet50
    12 % and inductor 9 % faster, and cost the jit backend (its trace unrolls the strips, each converted to and
    from MKLDNN tensors); on BH-HRNet18 it helped inductor and not eager, hence both eager variants. On CUDA:
    the backends untiled.
    """
    kind = torch.device(device).type
    available = available_backends(kind)
    if kind != 'cpu':
        return available
    return tuple(c for c in ('eager', 'eager+tiled', 'jit', 'inductor+tiled') if c.split('+')[0] in available)


def _parse_candidate(spec: str, tile_stem: bool | None) -> tuple[str, bool]:
    backend, _, suffix = spec.partition('+')
    if backend not in BACKENDS or suffix not in ('', 'tiled'):
        raise ValueError(f'unknown candidate {spec!r}: use one of {BACKENDS}, optionally with "+tiled" (a tiled stem)')
    return backend, bool(suffix) if tile_stem is None else tile_stem


def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    backend: str = 'auto',
    *,
    candidates: Sequence[str] | None = None,
    channels_last: bool = True,
    fold_bn: bool = True,
    tile_stem: bool | None = None,
    rtol: float = 1e-4,
    repeats: int = 3,
) -> OptimizedModel:
    """A copy of ``model`` for fast inference: eval, BN folded, channels_last, on the fastest backend.

    See the module docstring for the steps and backends. The copy's outputs equal the eager model's within
    ``rtol`` relative to each output's largest magnitude, checked on ``example_input``.

    Args:
        model: Any CNN, e.g. ``timm.create_model('bh_resnet50')`` or a ``features_only`` model. Not modified.
        example_input: An input batch at the size you will run (the timing of ``'auto'`` is done on it, and the
            ``'jit'``/``'inductor'`` backends specialise to its shape; another shape is traced/compiled on first
            use). Default: one random image at ``model.pretrained_cfg['input_size']``, on the model's device.
        backend: ``'auto'`` (build, check and time every candidate, keep the fastest), or one of ``BACKENDS``.
        candidates: What ``'auto'`` tries, e.g. ``('eager', 'inductor+tiled')``; default
            ``default_candidates(device)``.
        channels_last: Use channels_last weights and inputs (4-D inputs only).
        fold_bn: Fold BatchNorms into the preceding convolutions (needs a ``torch.fx``-traceable model).
        tile_stem: Compute a stride-1 stem convolution and its strided reducer in strips (``StripTiledStem``) for
            every candidate (True) or none (False). Default None: as each candidate says (``+tiled``); for a fixed
            ``backend``, tiled on the CPU except for ``'jit'``.
        rtol: Largest allowed ``max|optimized - eager| / max|eager|`` per output tensor.
        repeats: Timed calls per candidate for ``'auto'`` (after one warm-up call).

    Returns:
        An ``OptimizedModel``; its ``backend``, ``folded``, ``tiled``, ``max_rel_error`` and ``candidates`` say
        what was done.

    Raises:
        ValueError: For an unknown backend or candidate, or an input size that cannot be inferred.
        RuntimeError: When no candidate builds or matches the eager model within ``rtol`` (the message lists why
            each failed).
    """
    if backend != 'auto' and backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; use "auto" or one of {BACKENDS}')
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    dtype = param.dtype if param is not None else torch.float32
    if backend == 'auto':
        specs = [_parse_candidate(c, tile_stem) for c in (candidates or default_candidates(device))]
    else:
        default_tiled = device.type == 'cpu' and backend != 'jit'
        specs = [(backend, default_tiled if tile_stem is None else tile_stem)]

    eager = copy.deepcopy(model).eval()
    for p in eager.parameters():
        p.requires_grad_(False)
    x = _default_input(eager, device, dtype) if example_input is None else example_input.to(device)
    with torch.no_grad():
        expected = eager(x)
    folded = fold_batch_norms(eager) if fold_bn else []  # the copy is ours: transform it in place
    prepared: dict[bool, nn.Module] = {False: eager}
    tiled: list[str] = []
    if any(t for _, t in specs):
        prepared[True] = copy.deepcopy(eager) if any(not t for _, t in specs) else eager
        tiled = tile_stems(prepared[True])
        if not tiled:  # no stem to tile: '+tiled' is the same as untiled
            prepared[True] = eager
            specs = [(b, False) for b in dict.fromkeys(b for b, _ in specs)]
    if channels_last:
        prepared = {t: m.to(memory_format=torch.channels_last) for t, m in prepared.items()}
    x_in = _to_memory_format(x, channels_last)

    tried: list[Candidate] = []
    built: dict[int, _Runner] = {}
    for index, (name, with_tiles) in enumerate(dict.fromkeys(specs)):
        cand = Candidate(name, with_tiles)
        tried.append(cand)
        start = time.perf_counter()
        try:
            runner = _Runner(name, prepared[with_tiles])
            with torch.no_grad():
                got = runner(x_in)  # the first call traces ('jit') or compiles ('inductor')
            cand.max_rel_error = max_relative_error(got, expected)
        except Exception as exc:  # a backend that cannot handle this model is skipped, with the reason
            cand.error = f'{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ""}'
            continue
        finally:
            cand.build_s = time.perf_counter() - start
        if cand.max_rel_error > rtol:
            cand.error = f'max relative error {cand.max_rel_error:.2e} > rtol {rtol:g}'
            continue
        built[index] = runner
    if not built:
        reasons = '; '.join(f'{c.name}: {c.error}' for c in tried)
        raise RuntimeError(
            f'no backend could optimize {type(model).__name__} within rtol={rtol:g} ({reasons}). Try fold_bn=False, '
            'tile_stem=False or channels_last=False, or use the eager model.'
        )
    if len(built) > 1:
        with torch.no_grad():
            for runner in built.values():
                runner(x_in)  # warm-up
            for index, runner in built.items():
                tried[index].latency_ms = _median_ms(runner, x_in, repeats)
    best = min(built, key=lambda i: tried[i].latency_ms or 0.0)
    winner = tried[best]
    return OptimizedModel(
        prepared[winner.tiled],
        built[best],
        channels_last,
        folded,
        tiled if winner.tiled else [],
        winner.max_rel_error or 0.0,
        tried,
    )
