"""One builder for every BH model: timm's ``build_model_with_cfg`` plus the checks users need."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._registry import get_arch_pretrained_cfgs, is_model, model_entrypoint, split_model_name_tag
from torch import nn

from .features import StageFeatureListNet
from .hub import resolve_pretrained_source
from .layers import GuardedConv2d
from .weights import guard_state_dict

ModelT = TypeVar('ModelT', bound=nn.Module)
_WEIGHT_SOURCES = ('url', 'file', 'hf_hub_id', 'state_dict')


def bh_pretrained_cfg(classifier: str, **kwargs: Any) -> dict[str, Any]:
    """The untagged timm ``pretrained_cfg`` every BH model starts from (no weights; ImageNet preprocessing).

    Args:
        classifier: Name of the model's classifier module (``'fc'``, ``'classifier'``).
        **kwargs: Fields to override or add.
    """
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1',
        'classifier': classifier,
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2303.11267',
        'paper_name': 'Rethinking the Backbone Architecture for Tiny Object Detection',
        **kwargs,
    }


def register_bh_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``timm.models.register_model`` that refuses to overwrite a name another package registered."""
    name = fn.__name__
    if is_model(name) and model_entrypoint(name).__module__ != fn.__module__:
        owner = model_entrypoint(name).__module__
        raise RuntimeError(f'cannot register {name!r}: timm already has a model of that name from {owner}.')
    return register_model(fn)


def available_tags(variant: str) -> list[str]:
    """Pretrained tags registered for ``variant`` ('' is the untagged default)."""
    return [split_model_name_tag(name)[1] for name in get_arch_pretrained_cfgs(variant)]


def _has_weights(cfg: Any) -> bool:
    return any(getattr(cfg, key, None) for key in _WEIGHT_SOURCES)


def _weights_tags(variant: str) -> list[str]:
    cfgs = get_arch_pretrained_cfgs(variant)
    return [split_model_name_tag(name)[1] for name, cfg in cfgs.items() if _has_weights(cfg)]


def check_pretrained_request(
    variant: str,
    pretrained: bool,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict | None = None,
) -> None:
    """Raise a clear error for an unknown tag, or for ``pretrained=True`` where no weights exist."""
    if isinstance(pretrained_cfg, str) and pretrained_cfg not in available_tags(variant):
        tags = [t for t in available_tags(variant) if t]
        raise ValueError(
            f'unknown pretrained tag {pretrained_cfg!r} for {variant}; registered tags: '
            f'{", ".join(f"{variant}.{t}" for t in tags) or "none yet"}. '
            f'See timm.list_pretrained("{variant}*").'
        )
    if not pretrained:
        return
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    if not _has_weights(cfg):
        with_weights = [f'{variant}.{t}' if t else variant for t in _weights_tags(variant)]
        raise RuntimeError(
            f'no pretrained weights are registered for {variant}{"." + cfg.tag if cfg.tag else ""}. '
            f'Tags with weights: {", ".join(with_weights) or "none"}. Use pretrained=False, pick a tag with '
            f'weights, or point at a file: pretrained_cfg_overlay=dict(file="weights.safetensors").'
        )


def build_bh_model(
    model_cls: Callable[..., ModelT],
    variant: str,
    pretrained: bool = False,
    feature_cls: type = StageFeatureListNet,
    **kwargs: Any,
) -> ModelT:
    """Build ``model_cls`` for ``variant`` through timm's ``build_model_with_cfg``.

    Adds, before building, a clear error for an unknown tag or missing weights; ``features_only`` uses
    ``feature_cls`` (which validates ``out_indices`` and keeps frozen stages). Keyword arguments go to
    ``build_model_with_cfg`` and the model class as usual.

    With ``pretrained=True`` the weight file is found and checked first (``hub.resolve_pretrained_source``: a card's
    local file or Hub file against its sha256), then timm's ``load_pretrained`` loads it through a state-dict guard
    (``weights.check_state_dict``) that refuses missing or mis-shaped keys instead of half-loading the model.
    """
    check_pretrained_request(variant, pretrained, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if pretrained:
        overlay, source = resolve_pretrained_source(
            variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'), kwargs.get('cache_dir')
        )
        kwargs['pretrained_cfg_overlay'] = overlay
        kwargs['pretrained_filter_fn'] = guard_state_dict(
            variant,
            source,
            strict=kwargs.get('pretrained_strict', True),
            features_only=bool(kwargs.get('features_only')),
            user_filter=kwargs.get('pretrained_filter_fn'),
        )
    model = build_model_with_cfg(
        model_cls, variant, pretrained, feature_cfg=dict(feature_cls=feature_cls, flatten_sequential=False), **kwargs
    )
    for module in model.modules():
        if isinstance(module, GuardedConv2d):
            module.network_name = variant
    return model
