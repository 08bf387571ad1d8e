"""``bh-models convert``: the authors' MMDetection checkpoint (or a plain state dict) to a safetensors backbone.

The authors released ``bh50_in1k.pth`` for BH-ResNet50: an MMDetection/MMCV pickle whose ``state_dict`` holds the
backbone under ``backbone.*`` next to ``neck.*``, ``rpn_head.*``, ... keys (and ``meta``, maybe ``optimizer``).
Their parameter names are ours (torchvision/MMDetection), so conversion is: open the pickle safely
(``torch.load(weights_only=True)``, never arbitrary code), keep ``backbone.*`` without the prefix, report everything
dropped, refuse (with the list) any missing, unexpected or mis-shaped backbone key, and write a safetensors file that
loads with::

    timm.create_model('bh_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file='bh50_in1k.safetensors'))

(and ``features_only=True`` alike). The file has no classifier (unless the source had one): the classifier model
keeps its initialisation, with a warning.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.models._helpers import clean_state_dict

from .weights import WeightFileError, sha256_file

__all__ = [
    'ConversionError',
    'ConversionReport',
    'convert_checkpoint',
    'load_checkpoint_safely',
    'load_overlay',
    'main',
]

BACKBONE_PREFIX = 'backbone.'
_STATE_DICT_KEYS = ('state_dict', 'model')  # MMCV / MMDetection, detectron2 / torchvision references
_META_SHOWN = ('mmdet_version', 'mmcls_version', 'mmcv_version', 'epoch', 'iter', 'time')


class ConversionError(ValueError):
    """A checkpoint that cannot become a complete backbone file; nothing is written."""


@dataclass
class ConversionReport:
    """What ``convert_checkpoint`` read, kept, dropped and wrote."""

    model: str
    source: Path
    dst: Path
    layout: str
    kept: int
    params: int
    num_classes: int
    in_chans: int
    sha256: str
    size_bytes: int
    dropped: dict[str, int] = field(default_factory=dict)  # non-backbone key prefix -> number of keys
    ignored: list[str] = field(default_factory=list)  # top-level checkpoint entries besides the state dict
    filled: list[str] = field(default_factory=list)  # BN counters the source lacked, written as 0
    meta: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report, one line per fact, as ``bh-models convert`` prints it."""
        meta = ', '.join(f'{k} {v}' for k, v in self.meta.items())
        ignored = f'; ignored entries: {", ".join(self.ignored)}' if self.ignored else ''
        classifier = f'classifier of {self.num_classes} classes' if self.num_classes else 'no classifier'
        dropped = ', '.join(f'{prefix} ({n})' for prefix, n in self.dropped.items())
        lines = [
            f'converted {self.source} -> {self.dst}',
            f'  source:  {self.layout}{f" (meta: {meta})" if meta else ""}{ignored}',
            f'  kept:    {self.kept} tensors ({self.params:,} parameters) for {self.model}: {classifier}, '
            f'{self.in_chans} input channels',
            f'  dropped: {sum(self.dropped.values())} non-backbone keys: {dropped}'
            if self.dropped
            else '  dropped: nothing',
        ]
        if self.filled:
            lines.append(
                f'  filled:  {len(self.filled)} BatchNorm num_batches_tracked counters absent from the source (0)'
            )
        lines += [
            f'  wrote:   {self.dst} ({self.size_bytes} bytes, sha256 {self.sha256})',
            f"  load it: timm.create_model('{self.model}', pretrained=True, "
            f'pretrained_cfg_overlay={_overlay_text(self.dst, self.num_classes, self.in_chans)})  '
            '(after `import bh_models`)',
        ]
        return lines


def load_overlay(dst: str | Path, num_classes: int, in_chans: int) -> dict[str, Any]:
    """The ``pretrained_cfg_overlay`` that loads a converted file: its path, and its classes and channels when the
    file has a classifier or another number of input channels (timm then builds the model to match)."""
    overlay: dict[str, Any] = dict(file=str(dst))
    if num_classes:
        overlay['num_classes'] = num_classes
    if in_chans != 3:
        overlay['input_size'] = (in_chans, 224, 224)
    return overlay


def _overlay_text(dst: str | Path, num_classes: int, in_chans: int) -> str:
    items = ', '.join(f'{k}={v!r}' for k, v in load_overlay(dst, num_classes, in_chans).items())
    return f'dict({items})'


def load_checkpoint_safely(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that say what is wrong and what to do.

    Raises:
        FileNotFoundError: No such file.
        ConversionError: The pickle needs globals that ``weights_only`` refuses (listed), or the file is truncated
            or not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist.')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 (a corrupt file: the original error says more)
            unsafe = []
        if unsafe:
            raise ConversionError(
                f'{path} needs Python objects beyond tensors and containers to unpickle ({", ".join(unsafe)}); '
                'bh-models opens pickles with torch.load(weights_only=True) only, which never runs code from the '
                'file. On a machine where you trust the file, save just its state dict and convert that: '
                f"torch.save(torch.load('{path.name}', weights_only=False)['state_dict'], 'state_dict.pth')."
            ) from e
        raise ConversionError(f'{path} is not a readable PyTorch checkpoint (corrupt?): {e}') from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConversionError(
            f'{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}. Download it again.'
        ) from e


def _state_dict_of(checkpoint: Any, path: Path) -> tuple[dict[str, Any], str, list[str], dict[str, Any]]:
    """``(state_dict, layout, other top-level entries, meta)`` of a loaded checkpoint."""
    if not isinstance(checkpoint, dict):
        raise ConversionError(f'{path} holds a {type(checkpoint).__name__}, not a state dict or a checkpoint dict.')
    key = next((k for k in _STATE_DICT_KEYS if isinstance(checkpoint.get(k), dict)), None)
    if key is None:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return dict(checkpoint), 'a plain state dict', [], {}
        entries = {k: type(v).__name__ for k, v in list(checkpoint.items())[:10]}
        raise ConversionError(
            f'{path} has no state dict: expected tensors, or a "state_dict"/"model" entry; '
            f'top-level entries: {entries}.'
        )
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    shown = {k: meta[k] for k in _META_SHOWN if isinstance(meta.get(k), (str, int, float))}
    ignored = [k for k in checkpoint if k != key]
    return dict(checkpoint[key]), f'a checkpoint with "{key}"', ignored, shown


def _reference(model: str, num_classes: int, in_chans: int) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Shapes of every state-dict entry of ``model`` (built on the meta device), and which are parameters."""
    import timm

    with torch.device('meta'):
        net = timm.create_model(model, num_classes=num_classes, in_chans=in_chans)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}, {k for k, _ in net.named_parameters()}


def _shorten(keys: Sequence[str], limit: int = 10) -> str:
    return ', '.join(keys[:limit]) + (f', ... (+{len(keys) - limit} more)' if len(keys) > limit else '')


def convert_checkpoint(model: str, src: str | Path, dst: str | Path, *, overwrite: bool = False) -> ConversionReport:
    """Convert ``src`` (MMDetection checkpoint or plain state dict) into ``dst``, a safetensors file for ``model``.

    Args:
        model: A registered BH model, e.g. ``bh_resnet50``.
        src: The checkpoint (a pickle; opened with ``torch.load(weights_only=True)``).
        dst: The ``.safetensors`` file to write (atomically; never half-written).
        overwrite: Replace an existing ``dst``.

    Raises:
        ConversionError: Missing, unexpected or mis-shaped backbone keys (all listed), or an unreadable source.
    """
    import timm

    src, dst = Path(src), Path(dst)
    if not timm.is_model(model) or not model.startswith('bh_'):
        raise ConversionError(f'{model!r} is not a registered BH model; choose from {timm.list_models("bh_*")}.')
    if dst.suffix != '.safetensors':
        raise ConversionError(f'{dst} must end in .safetensors (the only format bh-models writes).')
    if dst.exists() and not overwrite:
        raise FileExistsError(f'{dst} exists; choose another name or pass --force.')
    state_dict, layout, ignored, meta = _state_dict_of(load_checkpoint_safely(src), src)
    state_dict = clean_state_dict(state_dict)  # DDP's 'module.' / torch.compile's '_orig_mod.' prefixes
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f'{src}: the state dict holds non-tensor entries: {_shorten(not_tensors)}.')

    dropped: Counter[str] = Counter()
    if any(k.startswith(BACKBONE_PREFIX) for k in state_dict):
        layout += f" and '{BACKBONE_PREFIX}*' keys (MMDetection layout)"
        backbone = {}
        for key, value in state_dict.items():
            if key.startswith(BACKBONE_PREFIX):
                backbone[key[len(BACKBONE_PREFIX) :]] = value
            else:
                dropped[key.split('.', 1)[0]] += 1
    else:
        backbone = state_dict

    cfg = timm.get_pretrained_cfg(model)
    fc = backbone.get(f'{cfg.classifier}.weight')
    num_classes = fc.shape[0] if fc is not None else 0
    stem = backbone.get(f'{cfg.first_conv}.weight')
    in_chans = stem.shape[1] if stem is not None and stem.ndim == 4 else 3
    expected, parameters = _reference(model, num_classes, in_chans)
    filled = [k for k in expected if k not in backbone and k.endswith('.num_batches_tracked')]
    missing = [k for k in expected if k not in backbone and k not in filled]
    unexpected = [k for k in backbone if k not in expected]
    misshaped = [
        f'{k}: source {tuple(v.shape)}, {model} {expected[k]}'
        for k, v in backbone.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f'{len(missing)} backbone key(s) missing: {_shorten(missing)}')
    if misshaped:
        problems.append(f'{len(misshaped)} key(s) with another shape: {_shorten(misshaped, 5)}')
    if unexpected:
        problems.append(f'{len(unexpected)} key(s) {model} does not have: {_shorten(unexpected)}')
    if problems:
        raise ConversionError(
            f'{src} is not a complete {model} backbone: {"; ".join(problems)}. Nothing was written. '
            f"Is it a checkpoint of {model} (BH-ResNet50: the authors' bh50_in1k.pth)?"
        )
    tensors = {k: backbone[k].contiguous() if k in backbone else torch.zeros((), dtype=torch.long) for k in expected}

    dst.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        'format': 'pt',
        'model': model,
        'converted_from': src.name,
        'source_sha256': sha256_file(src),
        'converted_by': 'bh-models convert',
    }
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f'.{dst.name}.', suffix='.partial.safetensors')
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        written = load_file(str(tmp))
        if written.keys() != tensors.keys() or not all(torch.equal(written[k], tensors[k]) for k in tensors):
            raise WeightFileError(f'{tmp} does not read back as written; nothing was converted.')
        # the promise of this command: the file loads through timm's own loader into the model
        overlay = {**load_overlay(tmp, num_classes, in_chans), 'num_classes': num_classes}  # exactly the file
        timm.create_model(model, pretrained=True, pretrained_cfg_overlay=overlay)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return ConversionReport(
        model=model,
        source=src,
        dst=dst,
        layout=layout,
        kept=len(tensors),
        params=sum(t.numel() for k, t in tensors.items() if k in parameters),
        num_classes=num_classes,
        in_chans=in_chans,
        sha256=sha256_file(dst),
        size_bytes=dst.stat().st_size,
        dropped=dict(sorted(dropped.items())),
        ignored=ignored,
        filled=filled,
        meta=meta,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``bh-models convert --model bh_resnet50 SRC DST.safetensors``."""
    parser = argparse.ArgumentParser(
        prog='bh-models convert',
        description="Convert the authors' MMDetection checkpoint (backbone.* keys) or a plain backbone state dict "
        'into a safetensors file that timm loads (pretrained_cfg_overlay=dict(file=DST)).',
    )
    parser.add_argument('--model', required=True, help='the BH model the checkpoint is for, e.g. bh_resnet50')
    parser.add_argument('src', help='the checkpoint (.pth; opened with torch.load(weights_only=True))')
    parser.add_argument('dst', help='the .safetensors file to write')
    parser.add_argument('--force', action='store_true', help='replace DST if it exists')
    args = parser.parse_args(argv)
    try:
        report = convert_checkpoint(args.model, args.src, args.dst, overwrite=args.force)
    except (ConversionError, FileNotFoundError, FileExistsError, WeightFileError) as e:
        print(f'bh-models convert: {e}', file=sys.stderr)
        return 1
    print('\n'.join(report.lines()))
    return 0
