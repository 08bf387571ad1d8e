"""Feature-extraction helpers: ``out_indices`` validation and a frozen-stage-aware ``FeatureListNet``."""

from __future__ import annotations

from collections.abc import Sequence

from timm.models import FeatureListNet
from torch import nn

from .freezing import FreezableStagesMixin


def describe_levels(feature_info: Sequence[dict]) -> str:
    """One line per feature level: index, module, channels and stride."""
    return '; '.join(
        f'{i}={info["module"]} ({info["num_chs"]} ch, stride {info["reduction"]})'
        for i, info in enumerate(feature_info)
    )


def check_out_indices(out_indices: int | Sequence[int], feature_info: Sequence[dict], name: str) -> tuple[int, ...]:
    """Validate timm-style ``out_indices`` and return them as absolute, increasing indices.

    An int ``n`` means the last ``n`` levels (timm's convention); negative indices count from the end.
    Raises ``ValueError`` naming the valid levels for anything else.
    """
    num = len(feature_info)
    levels = describe_levels(feature_info)
    if isinstance(out_indices, bool) or not isinstance(out_indices, (int, Sequence)):
        raise ValueError(f'out_indices must be an int or a sequence of ints, got {out_indices!r}. Levels: {levels}')
    if isinstance(out_indices, int):
        if not 0 < out_indices <= num:
            raise ValueError(
                f'out_indices={out_indices} asks for the last {out_indices} levels but {name} has {num}; '
                f'use 1..{num}, or a tuple of indices. Levels: {levels}'
            )
        return tuple(range(num - out_indices, num))
    absolute = []
    for idx in out_indices:
        if isinstance(idx, bool) or not isinstance(idx, int) or not -num <= idx < num:
            raise ValueError(
                f'out_indices={tuple(out_indices)!r}: {idx!r} is not a feature level of {name}; valid indices are '
                f'0..{num - 1} (or -{num}..-1). Levels: {levels}'
            )
        absolute.append(idx % num)
    if not absolute:
        raise ValueError(f'out_indices is empty; pick levels of {name} from: {levels}')
    if any(b <= a for a, b in zip(absolute, absolute[1:], strict=False)):
        raise ValueError(
            f'out_indices={tuple(out_indices)!r} resolves to {tuple(absolute)}: indices must be distinct and '
            f'increasing (features come out in network order). Levels: {levels}'
        )
    return tuple(absolute)


class StageFeatureListNet(FreezableStagesMixin, FeatureListNet):
    """timm's ``FeatureListNet`` that validates ``out_indices`` and keeps the model's frozen stages.

    ``FeatureListNet`` re-assembles the model's top-level modules into a new container, so an overridden
    ``train()`` on the model would be lost; this subclass carries ``frozen_stages``/``norm_eval`` over.
    State-dict keys are the model's own (``conv1.weight``, ``layer1.0.conv1.weight``, ...).
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4), **kwargs) -> None:
        name = model.pretrained_cfg.get('architecture') or type(model).__name__
        out_indices = check_out_indices(out_indices, model.feature_info, name)
        super().__init__(model, out_indices=out_indices, **kwargs)
        self.stage_names = model.stage_names
        self.frozen_stages = model.frozen_stages
        self.norm_eval = model.norm_eval
        self.train(model.training)
