"""Small layers shared by the BH backbones."""

from __future__ import annotations

import torch
from torch import nn


class GuardedConv2d(nn.Conv2d):
    """A ``Conv2d`` stem that checks its input before convolving.

    It is a plain ``nn.Conv2d`` for weights, state-dict keys and BN folding; the only addition is an
    eager-mode check that the input has the channels the network was built for and is at least as large
    as the network's total stride, so that a wrong ``in_chans`` or a too-small image fails with an error
    that says what to change, instead of a shape error deep inside the network.

    Args:
        *args: Passed to ``nn.Conv2d``.
        min_input_size: Smallest height and width the network accepts (its total stride).
        network_name: Name used in error messages.
        **kwargs: Passed to ``nn.Conv2d``.
    """

    def __init__(self, *args, min_input_size: int = 1, network_name: str = 'this network', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.min_input_size = min_input_size
        self.network_name = network_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input (eager mode only), then convolve."""
        if not torch.jit.is_scripting():
            self._check_input(x)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.fx.Proxy) or x.dim() != 4:
            return
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
        if channels != self.in_channels:
            raise ValueError(
                f'{self.network_name} was built for {self.in_channels}-channel input but got {channels} channels '
                f'(input shape {tuple(x.shape)}); create it with in_chans={channels}, e.g. '
                f'timm.create_model(name, in_chans={channels}).'
            )
        if height < self.min_input_size or width < self.min_input_size:
            raise ValueError(
                f'input {height}x{width} (HxW) is smaller than the total stride of {self.network_name} '
                f'({self.min_input_size}); use images of at least {self.min_input_size}x{self.min_input_size} '
                f'(multiples of {self.min_input_size} keep every feature map aligned).'
            )


class CheckpointedStemMixin:
    """Gradient checkpointing of the full-resolution stem, for a model with ``forward_stem`` and ``grad_checkpointing``.

    timm checkpoints the stages only. A BH stem convolves at full resolution (64 channels at 640x512 keep about
    84 MB per image per saved tensor), so with ``set_grad_checkpointing()`` it is recomputed in the backward pass
    as well: only the input image is kept. The non-reentrant form is used, so the stem's parameters get gradients
    although the image does not require any.
    """

    def stem_maybe_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_stem(x)``, recomputed in the backward pass when gradient checkpointing is on."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._checkpointed_stem(x)
        return self.forward_stem(x)

    @torch.jit.unused
    def _checkpointed_stem(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.forward_stem, x, use_reentrant=False)
