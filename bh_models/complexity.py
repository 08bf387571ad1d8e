"""Parameter counts and GFLOPs in the conventions of the paper's Table 4 (see ``bh_models.paper``).

Units, stated once and used everywhere in this module:

* **Parameters** are plain counts (``int``); divide by 1e6 for the "M" of Table 4.
* **FLOPs** are what ptflops' ``pytorch`` backend returns with ``count_functional=False``: multiply-accumulates of
  convolutions and linear layers (+1 per output for a bias), 2 x numel for an affine BatchNorm, numel for ReLU,
  the input numel for pooling and the output numel for upsampling, for one image. That is the MMCV 1.x
  ``get_model_complexity_info`` convention the paper used, so the paper's "GFLOPs" are these counts / 1e9 --
  GMACs for the convolutions, *not* the 2-FLOPs-per-MAC count of ``torch.utils.flop_counter``.

Two FLOP scopes (``SCOPES``):

* ``'backbone'``: the trunk alone. ResNets: stem + ``layer1..4`` (what ``timm.create_model(name, num_classes=0,
  global_pool='')`` runs). HRNets: stem + stages, ending at the raw outputs of the four branches (no ``incre``,
  downsample or final layers, what ``timm.create_model(name, head='')`` runs).
* ``'backbone+head'``: timm's default 1000-class classification model: for ResNets the trunk + global avg-pool
  + fc (what the paper's ResNet rows round from), for HRNets the trunk + timm's classification head.

Three parameter conventions (``PARAM_CONVENTIONS``), always counted on the backbone (no classifier head):

* ``'all'``: every parameter, BatchNorm included.
* ``'conv'``: weights of every ``nn.Conv2d`` (subclasses included), no biases.
* ``'conv_trainable_frozen1'``: ``'conv'`` outside the stem and stage 1, i.e. what stays trainable when the
  detector freezes them (MMDetection ``frozen_stages=1``). The stem and stage 1 are the model's
  ``stage_names[0]`` and ``stage_names[1]`` when it has them (the BH models), else per family: ResNet
  ``conv1, bn1`` + ``layer1``, HRNet ``conv1, bn1, conv2, bn2`` + ``layer1``.

The model family is told by ``isinstance`` on timm's classes (``ResNet``, ``HighResolutionNet``), never by name,
so subclasses built by ``bh_models`` are handled like timm's own models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ptflops
import timm
import torch
from ptflops.pytorch_ops import MODULES_MAPPING
from timm.models.hrnet import HighResolutionNet
from timm.models.resnet import ResNet
from torch import nn

from .paper import INPUT_SIZE_HW

__all__ = [
    'PARAM_CONVENTIONS',
    'SCOPES',
    'BackboneTrunk',
    'Complexity',
    'build_for_scope',
    'count_flops',
    'count_flops_for_input',
    'count_params',
    'describe_device',
    'measure',
    'model_family',
    'resolve_device',
    'strip_head',
]

PARAM_CONVENTIONS: tuple[str, ...] = ('all', 'conv', 'conv_trainable_frozen1')
SCOPES: tuple[str, ...] = ('backbone', 'backbone+head')

# top-level modules of the classifier head, per family (never part of the backbone)
_HEAD_MODULES: dict[str, tuple[str, ...]] = {
    'resnet': ('global_pool', 'fc'),
    'hrnet': ('incre_modules', 'downsamp_modules', 'final_layer', 'global_pool', 'head_drop', 'classifier'),
}
# stem, then stage 1, for timm models that do not list their ``stage_names``
_FAMILY_STAGE_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    'resnet': (('conv1', 'bn1'), ('layer1',)),
    'hrnet': (('conv1', 'bn1', 'conv2', 'bn2'), ('layer1',)),
}


class BackboneTrunk(nn.Module):
    """A head-less model whose ``forward`` is the wrapped model's ``forward_features``.

    ResNets return the last stage's map, HRNets the list of raw branch outputs. Made by ``build_for_scope``.

    Args:
        net: A model already passed through ``strip_head``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Run the trunk: ``net.forward_features(x)``."""
        return self.net.forward_features(x)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.net if isinstance(model, BackboneTrunk) else model


def model_family(model: nn.Module) -> str:
    """``'resnet'`` or ``'hrnet'``, by ``isinstance`` on timm's ``ResNet`` / ``HighResolutionNet``.

    Raises:
        TypeError: For a model of neither family.
    """
    model = _unwrap(model)
    if isinstance(model, ResNet):
        return 'resnet'
    if isinstance(model, HighResolutionNet):
        return 'hrnet'
    raise TypeError(
        f'{type(model).__name__} is neither a timm ResNet nor a timm HighResolutionNet; '
        'bh_models.complexity knows the backbone/head split of those two families only.'
    )


def strip_head(model: nn.Module) -> nn.Module:
    """Remove the classifier head in place and return the model; ``forward_features`` is then the whole trunk.

    ResNets get ``reset_classifier(0, '')`` (as ``num_classes=0, global_pool=''`` at creation). HRNets lose
    ``incre_modules``, ``downsamp_modules`` and ``final_layer`` too, so ``forward_features`` returns the raw
    branch outputs (as ``head=''`` at creation).
    """
    family = model_family(model)
    if family == 'hrnet':
        model.incre_modules = None
        model.downsamp_modules = None
        model.final_layer = None
    model.reset_classifier(0, '')
    return model


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to count on: ``device`` if given, else CUDA when available, else the CPU.

    ``'meta'`` is accepted too: every ptflops hook used here reads only shapes, so counts on meta tensors are
    identical (the tests check this) and cost no arithmetic.
    """
    if device is None or device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def describe_device(device: torch.device) -> str:
    """Human-readable device: ``'cpu'``, ``'cuda:0 (NVIDIA H100 80GB HBM3)'`` or ``'meta (shapes only)'``."""
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f'cuda:{index} ({torch.cuda.get_device_name(index)})'
    if device.type == 'meta':
        return 'meta (shapes only)'
    return str(device)


def build_for_scope(name: str, scope: str, device: str | torch.device | None = None, **kwargs) -> nn.Module:
    """Create the registered timm model ``name`` (no pretrained weights) as FLOP scope ``scope`` counts it.

    Args:
        name: A timm model name (``import bh_models`` first for the BH models).
        scope: ``'backbone'`` (a ``BackboneTrunk``) or ``'backbone+head'`` (timm's default classifier).
        device: Where to create it, see ``resolve_device``.
        **kwargs: Passed to ``timm.create_model``.
    """
    if scope not in SCOPES:
        raise ValueError(f'unknown FLOP scope {scope!r}; use one of {SCOPES}')
    with torch.device(resolve_device(device)):
        model = timm.create_model(name, pretrained=False, **kwargs)
    model_family(model)  # fail early for unknown families
    if scope == 'backbone':
        model = BackboneTrunk(strip_head(model))
    return model.eval()


def _stem_and_stage1(model: nn.Module) -> tuple[str, ...]:
    stage_names = getattr(model, 'stage_names', None)
    if stage_names and len(stage_names) >= 2:
        return tuple(stage_names[0]) + tuple(stage_names[1])
    stem, stage1 = _FAMILY_STAGE_NAMES[model_family(model)]
    return stem + stage1


def count_params(model: nn.Module) -> dict[str, int]:
    """Backbone parameter counts in every convention of ``PARAM_CONVENTIONS`` (see the module docstring).

    Works on the full classifier model or its trunk alike: the family's head modules are never counted.
    """
    model = _unwrap(model)
    head = _HEAD_MODULES[model_family(model)]
    frozen = _stem_and_stage1(model)
    counts = dict.fromkeys(PARAM_CONVENTIONS, 0)
    for top_name, top in model.named_children():
        if top_name in head:
            continue
        counts['all'] += sum(p.numel() for p in top.parameters())
        conv = sum(m.weight.numel() for m in top.modules() if isinstance(m, nn.Conv2d))
        counts['conv'] += conv
        if top_name not in frozen:
            counts['conv_trainable_frozen1'] += conv
    # parameters registered directly on the model (none in timm's ResNet / HRNet)
    counts['all'] += sum(p.numel() for p in model.parameters(recurse=False))
    return counts


def _subclass_hooks(model: nn.Module) -> dict[type, Callable]:
    """ptflops hooks for subclasses of the module types it knows.

    ptflops (like MMCV 1.x) looks modules up by exact type, so e.g. ``bh_models.layers.GuardedConv2d`` (a plain
    ``nn.Conv2d`` plus an input check) would count as zero ops; give such subclasses their base class's hook.
    """
    hooks: dict[type, Callable] = {}
    for module in model.modules():
        cls = type(module)
        if cls in MODULES_MAPPING or cls in hooks:
            continue
        base = next((b for b in cls.__mro__[1:] if b in MODULES_MAPPING), None)
        if base is not None:
            hooks[cls] = MODULES_MAPPING[base]
    return hooks


def count_flops_for_input(model: nn.Module, input_res: Sequence[int]) -> int:
    """FLOPs (MMCV 1.x / ptflops MAC convention, see the module docstring) for one zero input of shape ``input_res``.

    The one place this package calls ptflops. The input is made on the model's device and dtype (a model without
    parameters gets a CPU float tensor).

    Args:
        model: The module to count; it is put in eval mode.
        input_res: Shape of one input without the batch dimension, e.g. ``(3, 512, 640)``.

    Raises:
        RuntimeError: When ptflops could not run the model (it prints the traceback and returns None).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    dtype = param.dtype if param is not None else torch.float32

    def zeros(res: tuple[int, ...]) -> torch.Tensor:
        # zeros rather than ptflops' uninitialised memory: same counts, no NaN/denormal slow paths on CPU
        return torch.zeros((1, *res), dtype=dtype, device=device)

    model.eval()
    with torch.inference_mode():
        flops, _ = ptflops.get_model_complexity_info(
            model,
            tuple(int(v) for v in input_res),
            as_strings=False,
            print_per_layer_stat=False,
            input_constructor=zeros,
            custom_modules_hooks=_subclass_hooks(model),
            backend='pytorch',
            backend_specific_config={'count_functional': False},
        )
    if flops is None:
        raise RuntimeError(f'ptflops could not count {type(model).__name__} for input {tuple(input_res)}.')
    return int(flops)


def count_flops(model: nn.Module, input_size_hw: Sequence[int] = INPUT_SIZE_HW) -> int:
    """FLOPs (MMCV 1.x / ptflops MAC convention, see the module docstring) for one RGB image of ``input_size_hw``.

    Args:
        model: The module to count, e.g. from ``build_for_scope``; it is put in eval mode.
        input_size_hw: Image height and width.
    """
    height, width = (int(v) for v in input_size_hw)
    return count_flops_for_input(model, (3, height, width))


@dataclass(frozen=True)
class Complexity:
    """Params (every convention) and FLOPs (every scope) of one model at one input size.

    ``params`` are counts by convention, ``flops`` ptflops/MMCV MAC counts by scope (see the module docstring).
    """

    model: str
    family: str
    device: str
    input_size_hw: tuple[int, int]
    params: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)

    def params_m(self, convention: str) -> float:
        """Parameters in millions, as Table 4 prints them."""
        return self.params[convention] / 1e6

    def gflops(self, scope: str) -> float:
        """The paper's "GFLOPs" (ptflops/MMCV GMACs) of ``scope``."""
        return self.flops[scope] / 1e9


def measure(
    name: str,
    input_size_hw: Sequence[int] = INPUT_SIZE_HW,
    device: str | torch.device | None = None,
    scopes: Sequence[str] = SCOPES,
) -> Complexity:
    """Build ``name`` once per scope on ``device`` and count its params and FLOPs.

    Args:
        name: A registered timm model name.
        input_size_hw: Image height and width (Table 4: 512 x 640).
        device: See ``resolve_device``; None picks CUDA when available, else the CPU.
        scopes: FLOP scopes to count.
    """
    dev = resolve_device(device)
    flops: dict[str, int] = {}
    params: dict[str, int] | None = None
    family = ''
    for scope in (*scopes,) or ('backbone',):
        model = build_for_scope(name, scope, dev)
        family = model_family(model)
        params = params or count_params(model)
        if scope in scopes:
            flops[scope] = count_flops(model, input_size_hw)
        del model
    height, width = (int(v) for v in input_size_hw)
    return Complexity(name, family, describe_device(dev), (height, width), params or {}, flops)
