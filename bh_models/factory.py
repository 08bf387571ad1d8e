"""Model lookup with errors that list the valid choices."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from timm.models._registry import split_model_name_tag
from torch import nn

from .builder import available_tags


def list_models(pretrained: bool = False) -> list[str]:
    """Names of the BH models (with ``pretrained=True``: ``name.tag`` of those with weights)."""
    if pretrained:
        return timm.list_pretrained('bh_*')
    return timm.list_models('bh_*')


def check_model_name(model_name: str) -> None:
    """Raise ``ValueError`` with the registered names (and the closest ones) for an unknown BH model or tag."""
    arch, tag = split_model_name_tag(model_name)
    names = list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'unknown model {arch!r}.{hint} BH models: {", ".join(names)}. (Is bh_models imported?)')
    if tag and tag not in available_tags(arch):
        tags = [f'{arch}.{t}' for t in available_tags(arch) if t]
        raise ValueError(f'unknown pretrained tag {tag!r} for {arch}; registered: {", ".join(tags) or "none yet"}.')


def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for BH models, with an error listing valid names for a typo.

    Args:
        model_name: A registered BH model, optionally with a pretrained tag (``bh_resnet50.fmnist``).
        pretrained: Load the tag's weights.
        **kwargs: Anything ``timm.create_model`` takes (``features_only``, ``out_indices``, ``num_classes``, ...).
    """
    check_model_name(model_name)
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)
