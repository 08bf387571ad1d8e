"""MMDetection-style ``frozen_stages`` and ``norm_eval`` for timm models and their feature wrappers.

``frozen_stages=k`` freezes the stem (stage 0) and stages 1..k: their parameters get
``requires_grad=False`` and their modules stay in eval mode (BN running statistics are not updated).
``norm_eval=True`` keeps every BatchNorm layer in eval mode while the model trains. ``-1`` freezes
nothing. This is the semantics of ``mmdet.models.backbones.ResNet``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

StageNames = Sequence[Sequence[str]]


def check_frozen_stages(frozen_stages: int, stage_names: StageNames) -> None:
    """Raise ``ValueError`` unless ``frozen_stages`` is -1 or names a stage (0 = stem)."""
    last = len(stage_names) - 1
    if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= last:
        raise ValueError(
            f'frozen_stages={frozen_stages!r} is out of range: use -1 (freeze nothing), 0 (the stem) '
            f'or 1..{last} (the stem and stages 1..k).'
        )


def _frozen_modules(root: nn.Module, stage_names: StageNames, frozen_stages: int) -> list[nn.Module]:
    modules = []
    for names in stage_names[: frozen_stages + 1]:
        modules.extend(getattr(root, name) for name in names if hasattr(root, name))
    return modules


def freeze_stages(root: nn.Module, stage_names: StageNames, frozen_stages: int) -> None:
    """Turn off gradients of the parameters of the stem and stages 1..``frozen_stages``."""
    for module in _frozen_modules(root, stage_names, frozen_stages):
        for param in module.parameters():
            param.requires_grad_(False)


def apply_eval_policy(root: nn.Module, stage_names: StageNames, frozen_stages: int, norm_eval: bool) -> None:
    """Put frozen stages, and with ``norm_eval`` all BatchNorm layers, into eval mode.

    Call it after ``nn.Module.train(mode)``; it only acts when ``mode`` is True.
    """
    if not root.training:
        return
    for module in _frozen_modules(root, stage_names, frozen_stages):
        module.eval()
    if norm_eval:
        for module in root.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


class FreezableStagesMixin:
    """Adds ``frozen_stages`` / ``norm_eval`` to a model that lists its stages' module names.

    The class using it sets ``self.stage_names`` (stem first) and calls ``self._init_freezing``
    at the end of ``__init__``.
    """

    # plain class attributes, not annotations: TorchScript would try to type annotated ones
    stage_names = ()
    frozen_stages = -1
    norm_eval = False

    def _init_freezing(self, frozen_stages: int, norm_eval: bool) -> None:
        check_frozen_stages(frozen_stages, self.stage_names)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        freeze_stages(self, self.stage_names, frozen_stages)
        self.train(self.training)

    def train(self, mode: bool = True):
        """Set train/eval mode, keeping frozen stages (and BN with ``norm_eval``) in eval mode."""
        super().train(mode)
        apply_eval_policy(self, self.stage_names, self.frozen_stages, self.norm_eval)
        return self
