"""Weight cards: one JSON file per published weight, turned into timm ``pretrained_cfg`` tags at import.

A card ``<weights dir>/<model>.<tag>.json`` is the single source of a weight's metadata (dataset, preprocessing,
recipe, measured top-1, params, GFLOPs at 640x512, license, sha256 and size of the file, Hub repo, the paper's
number). ``import bh_models`` reads every card and registers ``<model>.<tag>`` in timm's registry, so
``timm.list_pretrained('bh_*')`` and the cfgs cannot disagree with the cards. With no cards the registry holds only
the untagged, weightless default cfg of each model.

Settings (read when cards are loaded: at import, or by ``reload_cards``):

* ``BH_MODELS_WEIGHTS_DIR``: the directory of cards and local weight files (default: this repository's ``weights/``).
* ``BH_MODELS_HUB_ORG``: the Hugging Face organisation of card repos given without an owner (default ``bh-models``).

This module also holds the checks every load goes through: the file checks (size, sha256, a readable safetensors
header) and the state-dict guard that refuses missing or mis-shaped keys instead of half-loading a model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from timm.models import generate_default_cfgs, register_model
from timm.models._registry import model_entrypoint, split_model_name_tag

__all__ = [
    'CARD_FIELDS',
    'CardError',
    'WeightCard',
    'WeightFileError',
    'cards_dir',
    'check_card',
    'get_card',
    'hub_org',
    'list_cards',
    'make_card',
    'read_card',
    'read_cards',
    'reload_cards',
    'save_weights',
    'sha256_file',
    'verify_weight_file',
    'weights_dir',
    'with_card_tags',
    'write_card',
]

_logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = 'BH_MODELS_WEIGHTS_DIR'
HUB_ORG_ENV = 'BH_MODELS_HUB_ORG'
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / 'weights'
DEFAULT_HUB_ORG = 'bh-models'
CARD_SUFFIX = '.json'
PAPER_DATASETS = {'cifar100': 'CIFAR-100', 'imagenet32': 'ImageNet32', 'imagenet': 'ImageNet'}

_NAME_RE = re.compile(r'^(bh_[a-z0-9_]+)\.([a-z0-9_]+)$')
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
_REPO_RE = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$')
_INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest')

# Every card field, in file order, with what it means. weights/README.md documents the same list.
CARD_FIELDS: dict[str, str] = {
    'name': '"<model>.<tag>", equal to the file name without ".json"',
    'description': 'one sentence: what these weights are',
    'dataset': 'training data set, e.g. "CIFAR-100"',
    'dataset_hub_id': 'Hugging Face data set id for the model card metadata (null if none)',
    'eval_split': 'the split the metrics were measured on, e.g. "test (10,000 images)"',
    'num_classes': 'classifier outputs (0: a backbone-only file, no classifier)',
    'label_names': 'class names, in classifier order (null if not recorded)',
    'input_size': '[channels, height, width] the weights were trained at',
    'mean': 'per-channel normalisation mean (0-1 pixel scale)',
    'std': 'per-channel normalisation std (0-1 pixel scale)',
    'interpolation': 'resize interpolation: bilinear, bicubic or nearest',
    'crop_pct': 'center-crop fraction at evaluation (1.0: no crop)',
    'recipe': 'the command line that produced the weights',
    'metrics': 'measured numbers on eval_split, in percent: {"top1": ..., "top5": ...}; top1 required unless '
    'num_classes is 0',
    'paper_top1': "the paper's Table 5 top-1 (%) for this model and data set, null where the paper has none",
    'params_m_backbone': 'backbone parameters in millions, BN included, classifier excluded '
    '(complexity.count_params "all")',
    'gflops_640x512': 'GFLOPs of the backbone trunk for one input_size[0] x 512 x 640 image, MMCV 1.x / ptflops '
    'convention (multiply-adds, the unit of Table 4)',
    'license': 'license of the weights (Hugging Face identifier, e.g. apache-2.0)',
    'file': 'weight file name in the weights directory (safetensors)',
    'size_bytes': 'size of the weight file in bytes',
    'sha256': 'sha256 of the weight file (also of model.safetensors in the Hub repo)',
    'hub_repo': 'Hugging Face repo: "name" (in the BH_MODELS_HUB_ORG organisation) or "owner/name", '
    'optional "@revision"',
    'default': 'true: this tag is what the untagged model name means (default false: the untagged name has no weights)',
}
_OPTIONAL = {'description': '', 'dataset_hub_id': None, 'eval_split': '', 'label_names': None, 'paper_top1': None}
_OPTIONAL |= {'default': False, 'file': None}


class CardError(ValueError):
    """A weight card that cannot be used; the message names the file and the fix."""


class WeightFileError(RuntimeError):
    """A weight file that is missing, truncated, corrupt, or does not fit the model; never half-loaded."""


def weights_dir() -> Path:
    """The weights directory setting: ``$BH_MODELS_WEIGHTS_DIR``, else this repository's ``weights/``."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def hub_org() -> str:
    """The Hub organisation setting: ``$BH_MODELS_HUB_ORG``, else ``bh-models``."""
    return os.environ.get(HUB_ORG_ENV) or DEFAULT_HUB_ORG


@dataclass(frozen=True)
class WeightCard:
    """One published weight; see ``CARD_FIELDS`` for the meaning and unit of each field."""

    name: str
    dataset: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    recipe: str
    metrics: dict[str, float]
    params_m_backbone: float
    gflops_640x512: float
    license: str
    size_bytes: int
    sha256: str
    hub_repo: str
    description: str = ''
    dataset_hub_id: str | None = None
    eval_split: str = ''
    label_names: tuple[str, ...] | None = None
    paper_top1: float | None = None
    file: str | None = None
    default: bool = False
    source: str = field(default='', compare=False)  # where the card was read from (not a card field)

    @property
    def model(self) -> str:
        """The architecture, e.g. ``bh_resnet50``."""
        return split_model_name_tag(self.name)[0]

    @property
    def tag(self) -> str:
        """The pretrained tag, e.g. ``fmnist``."""
        return split_model_name_tag(self.name)[1]

    @property
    def filename(self) -> str:
        """The weight file's name in the weights directory."""
        return self.file or f'{self.name}.safetensors'

    @property
    def hf_hub_id(self) -> str:
        """The full Hub repo id (``owner/name[@revision]``), the organisation setting filled in."""
        return self.hub_repo if '/' in self.hub_repo.split('@')[0] else f'{hub_org()}/{self.hub_repo}'

    def pretrained_cfg(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The timm ``pretrained_cfg`` of this tag: the model's ``base`` cfg with the card's fields."""
        stride = 32  # the total stride of every BH model
        return {
            **base,
            'hf_hub_id': self.hf_hub_id,
            'num_classes': self.num_classes,
            'input_size': tuple(self.input_size),
            'pool_size': (math.ceil(self.input_size[1] / stride), math.ceil(self.input_size[2] / stride)),
            'mean': tuple(self.mean),
            'std': tuple(self.std),
            'interpolation': self.interpolation,
            'crop_pct': self.crop_pct,
            'license': self.license,
            'description': self.description or None,
            'label_names': tuple(self.label_names) if self.label_names else None,
            'notes': (f'dataset: {self.dataset}', f'recipe: {self.recipe}', f'sha256: {self.sha256}'),
        }

    def to_dict(self) -> dict[str, Any]:
        """The card as its JSON file holds it (field order of ``CARD_FIELDS``)."""
        data = asdict(self)
        data['input_size'], data['mean'], data['std'] = list(self.input_size), list(self.mean), list(self.std)
        data['label_names'] = list(self.label_names) if self.label_names else None
        return {key: data[key] for key in CARD_FIELDS}


def _fail(source: str, problem: str) -> CardError:
    return CardError(f'weight card {source}: {problem}. Fix the card (fields: see weights/README.md).')


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_card_data(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(source, f'expected a JSON object, got {type(data).__name__}')
    unknown = sorted(set(data) - set(CARD_FIELDS))
    if unknown:
        raise _fail(source, f'unknown field(s) {unknown}; valid fields: {list(CARD_FIELDS)}')
    missing = [k for k in CARD_FIELDS if k not in data and k not in _OPTIONAL]
    if missing:
        raise _fail(source, f'missing field(s) {missing}')
    data = {**_OPTIONAL, **data}

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise _fail(source, f'"{key}" must be {what}, got {data[key]!r}')

    need(isinstance(data['name'], str) and bool(_NAME_RE.match(data['name'])), 'name', '"bh_<model>.<tag>" (a-z 0-9 _)')
    for key in ('dataset', 'recipe', 'license', 'hub_repo'):
        need(isinstance(data[key], str) and bool(data[key].strip()), key, 'a non-empty string')
    for key in ('description', 'eval_split'):
        need(isinstance(data[key], str), key, 'a string')
    need(
        data['dataset_hub_id'] is None or isinstance(data['dataset_hub_id'], str), 'dataset_hub_id', 'null or a string'
    )
    need(bool(_REPO_RE.match(data['hub_repo'])), 'hub_repo', '"name", "owner/name" or "owner/name@revision"')
    need(isinstance(data['num_classes'], int) and not isinstance(data['num_classes'], bool), 'num_classes', 'an int')
    need(data['num_classes'] >= 0, 'num_classes', '>= 0')
    size = data['input_size']
    need(
        isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size),
        'input_size',
        '[C, H, W]',
    )
    for key in ('mean', 'std'):
        values = data[key]
        need(
            isinstance(values, list) and len(values) == size[0] and all(_number(v) for v in values),
            key,
            f'{size[0]} numbers',
        )
    need(all(v > 0 for v in data['std']), 'std', 'positive')
    need(data['interpolation'] in _INTERPOLATIONS, 'interpolation', f'one of {_INTERPOLATIONS}')
    need(_number(data['crop_pct']) and 0 < data['crop_pct'] <= 1, 'crop_pct', 'in (0, 1]')
    metrics = data['metrics']
    has_top1 = isinstance(metrics, dict) and ('top1' in metrics or data['num_classes'] == 0)
    need(has_top1, 'metrics', 'an object with "top1" (may be {} only for a backbone-only card, num_classes 0)')
    need(all(_number(v) and 0 <= v <= 100 for v in metrics.values()), 'metrics', 'percentages (0-100)')
    need(
        data['paper_top1'] is None or (_number(data['paper_top1']) and 0 <= data['paper_top1'] <= 100),
        'paper_top1',
        'null or a percentage',
    )
    for key in ('params_m_backbone', 'gflops_640x512'):
        need(_number(data[key]) and data[key] > 0, key, 'a positive number')
    need(isinstance(data['size_bytes'], int) and data['size_bytes'] > 0, 'size_bytes', 'a positive int')
    need(
        isinstance(data['sha256'], str) and bool(_SHA256_RE.match(data['sha256'])), 'sha256', '64 lowercase hex digits'
    )
    need(
        data['file'] is None
        or (isinstance(data['file'], str) and data['file'].endswith('.safetensors') and '/' not in data['file']),
        'file',
        'null or a plain "*.safetensors" name',
    )
    need(isinstance(data['default'], bool), 'default', 'true or false')
    labels = data['label_names']
    need(
        labels is None or (isinstance(labels, list) and len(labels) == data['num_classes']),
        'label_names',
        f'null or {data["num_classes"]} names',
    )
    return data


def card_from_dict(data: Any, source: str = '<dict>') -> WeightCard:
    """Validate card data (as JSON gives it) and return the ``WeightCard``; ``CardError`` names any problem."""
    data = _check_card_data(data, source)
    return WeightCard(
        **{
            **data,
            'input_size': tuple(data['input_size']),
            'mean': tuple(float(v) for v in data['mean']),
            'std': tuple(float(v) for v in data['std']),
            'label_names': tuple(data['label_names']) if data['label_names'] else None,
            'metrics': {k: float(v) for k, v in data['metrics'].items()},
        },
        source=source,
    )


def read_card(path: str | Path) -> WeightCard:
    """Read and validate one card file; its name must be ``<model>.<tag>.json``, equal to its ``"name"``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise CardError(
            f'weight card {path}: not valid JSON ({e}). Fix the card (fields: see weights/README.md).'
        ) from e
    card = card_from_dict(data, str(path))
    if path.name != card.name + CARD_SUFFIX:
        raise _fail(str(path), f'"name" is {card.name!r} but the file is {path.name}; name the file {card.name}.json')
    return card


def read_cards(directory: str | Path | None = None) -> dict[str, WeightCard]:
    """Every card (``*.json``) in ``directory`` (default: the weights directory setting), by name; {} if none."""
    directory = Path(directory) if directory is not None else weights_dir()
    if not directory.is_dir():
        return {}
    cards = [read_card(path) for path in sorted(directory.glob('*' + CARD_SUFFIX))]
    return {card.name: card for card in cards}


# --- the registry: cards -> timm pretrained cfgs ------------------------------------------------------------


@dataclass
class _Registry:
    directory: Path | None = None  # where the current cards were read from; None: not read yet
    cards: dict[str, WeightCard] = field(default_factory=dict)
    bases: dict[str, dict[str, Any]] = field(default_factory=dict)  # arch -> its untagged base cfg


_REGISTRY = _Registry()


def _read_setting_cards(directory: Path | None) -> tuple[Path, dict[str, WeightCard]]:
    if directory is None:
        directory = weights_dir()
        if os.environ.get(WEIGHTS_DIR_ENV) and not directory.is_dir():
            warnings.warn(
                f'{WEIGHTS_DIR_ENV}={directory} is not a directory: no weight cards are registered. '
                "Point it at the directory of the cards, or unset it for the repository's weights/.",
                UserWarning,
                stacklevel=3,
            )
    return directory, read_cards(directory)


def _ensure_loaded() -> _Registry:
    if _REGISTRY.directory is None:
        _REGISTRY.directory, _REGISTRY.cards = _read_setting_cards(None)
    return _REGISTRY


def _tagged_cfgs(bases: Mapping[str, Mapping[str, Any]], cards: Mapping[str, WeightCard]) -> dict[str, dict]:
    cfgs: dict[str, dict[str, Any]] = {}
    for arch, base in bases.items():
        mine = [card for card in cards.values() if card.model == arch]
        defaults = [card for card in mine if card.default]
        if len(defaults) > 1:
            raise _fail(
                defaults[1].source,
                f'{defaults[0].name} is already the default of {arch}; set "default": true on one card only',
            )
        # timm's generate_default_cfgs makes the first cfg with weights the default, unless a key's tag ends in
        # '*'. A card marked "default" gets the '*'; otherwise the untagged, weightless cfg comes last as 'arch.*',
        # so adding a card never changes what `timm.create_model(arch)` builds.
        if defaults:
            cfgs[arch] = dict(base)
        for card in mine:
            cfgs[card.name + ('*' if card.default else '')] = card.pretrained_cfg(base)
        if not defaults:
            cfgs[arch + '.*'] = dict(base)
    return cfgs


def with_card_tags(base_cfgs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A model module's cfgs for timm's ``generate_default_cfgs``: ``base_cfgs`` plus one tag per card.

    Use it where timm models define their cfgs, above the ``@register_model`` builders::

        default_cfgs = generate_default_cfgs(with_card_tags({name: bh_pretrained_cfg('fc') for name in ARCHS}))

    The untagged cfg stays each model's default unless a card says ``"default": true``.

    Args:
        base_cfgs: The untagged cfg (no weights) of each architecture of the module, by architecture name.
    """
    registry = _ensure_loaded()
    registry.bases.update({arch: dict(cfg) for arch, cfg in base_cfgs.items()})
    return _tagged_cfgs(base_cfgs, registry.cards)


def _check_claimed(cards: Mapping[str, WeightCard], bases: Mapping[str, Any], directory: Path | None) -> None:
    for card in cards.values():
        if card.model not in bases:
            raise _fail(
                card.source,
                f'model {card.model!r} is not a BH model (registered: {sorted(bases)}); '
                f'rename the card or remove it from {directory}',
            )


def check_cards_claimed() -> None:
    """Raise ``CardError`` for a card whose model is not a registered BH model (it would be silently unused)."""
    registry = _ensure_loaded()
    _check_claimed(registry.cards, registry.bases, registry.directory)


def reload_cards(directory: str | Path | None = None) -> dict[str, WeightCard]:
    """Read the cards again and re-register every BH model's tags in timm (no re-import needed).

    Use it after adding a card or changing ``BH_MODELS_WEIGHTS_DIR`` / ``BH_MODELS_HUB_ORG`` in a running process.
    Local weight files are then looked up in the same directory as the cards.

    Args:
        directory: The cards directory; default the ``BH_MODELS_WEIGHTS_DIR`` setting (else ``weights/``).

    Returns:
        The cards now registered, by ``<model>.<tag>``.
    """
    directory, cards = _read_setting_cards(Path(directory) if directory is not None else None)
    _check_claimed(cards, _REGISTRY.bases, directory)
    by_module: dict[str, list[str]] = {}
    for arch in _REGISTRY.bases:
        by_module.setdefault(model_entrypoint(arch).__module__, []).append(arch)
    generated = {
        arch: cfg
        for archs in by_module.values()
        for arch, cfg in generate_default_cfgs(_tagged_cfgs({a: _REGISTRY.bases[a] for a in archs}, cards)).items()
    }
    _REGISTRY.cards, _REGISTRY.directory = cards, directory
    for module_name, archs in by_module.items():
        module = sys.modules[module_name]
        for arch in archs:
            module.default_cfgs[arch] = generated[arch]
            with warnings.catch_warnings():
                # timm warns when a name is registered again; here that is the point (same function, new cfgs)
                warnings.filterwarnings('ignore', message=f'Overwriting {arch} in registry', category=UserWarning)
                register_model(model_entrypoint(arch))
    return dict(cards)


def list_cards() -> dict[str, WeightCard]:
    """The registered cards, by ``<model>.<tag>``."""
    return dict(_ensure_loaded().cards)


def get_card(name: str) -> WeightCard | None:
    """The registered card of ``<model>.<tag>``, or None."""
    return _ensure_loaded().cards.get(name)


def cards_dir() -> Path:
    """The directory the registered cards were read from; local weight files are looked up there too."""
    directory = _ensure_loaded().directory
    assert directory is not None
    return directory


def card_for_hub_repo(hf_hub_id: str) -> WeightCard | None:
    """The registered card whose Hub repo is ``hf_hub_id`` (revision ignored), or None."""
    repo = hf_hub_id.split('@')[0]
    return next((c for c in list_cards().values() if c.hf_hub_id.split('@')[0] == repo), None)


# --- file checks ------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def check_readable(path: str | Path, what: str = 'weight file', fix: str = '') -> None:
    """Raise ``WeightFileError`` unless ``path`` has a complete safetensors header or a PyTorch checkpoint layout.

    Reads the header only: a truncated safetensors file is caught here (its header promises more bytes than the
    file holds), before any tensor is loaded.
    """
    path = Path(path)
    if path.suffix == '.safetensors':
        try:
            with safe_open(str(path), framework='pt'):
                pass
        except SafetensorError as e:
            raise WeightFileError(
                f'{what} {path} is not a readable safetensors file (truncated or corrupt?): {e}. Nothing was loaded. '
                f'{fix}'.rstrip()
            ) from e
        return
    with open(path, 'rb') as f:
        magic = f.read(2)
    if not zipfile.is_zipfile(path) and magic != b'\x80\x02':  # torch.save's zip format, or its legacy pickle
        raise WeightFileError(
            f'{what} {path} is not a readable PyTorch checkpoint (truncated or corrupt?). Nothing was loaded. '
            f'{fix}'.rstrip()
        )


def verify_weight_file(
    path: str | Path,
    *,
    sha256: str | None = None,
    size_bytes: int | None = None,
    what: str = 'weight file',
    fix: str = '',
) -> Path:
    """Check a weight file before anything loads it: present, the recorded size and sha256, a readable header.

    Args:
        path: The file.
        sha256: Expected hex sha256 (from a card or an exported ``config.json``); None: check the header only.
        size_bytes: Expected size; a shorter file is reported as truncated.
        what: How to call the file in messages (``'local weight file of bh_resnet50.x'``).
        fix: A sentence appended to every error: how to get a good copy.

    Raises:
        WeightFileError: Naming the file, what is wrong with it and ``fix``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f'{what} {path} does not exist. {fix}'.rstrip())
    size = path.stat().st_size
    if size_bytes is not None and size != size_bytes:
        kind = 'truncated (an interrupted download or copy?)' if size < size_bytes else 'not the recorded file'
        raise WeightFileError(
            f'{what} {path} is {size} bytes but {size_bytes} are recorded: {kind}. Nothing was loaded. {fix}'.rstrip()
        )
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightFileError(
                f'{what} {path} has sha256 {actual} but {sha256} is recorded: the file is corrupt or a different '
                f'one. Nothing was loaded. {fix}'.rstrip()
            )
        return path
    check_readable(path, what, fix)
    return path


# --- the state-dict guard every pretrained load goes through ----------------------------------------------


def _module_keys(names: str | Iterable[str] | None, keys: Iterable[str], params: tuple[str, ...]) -> set[str]:
    if not names:
        return set()
    names = (names,) if isinstance(names, str) else tuple(names)
    return {f'{n}.{p}' for n in names for p in params} & set(keys)


def _shorten(keys: list[str], limit: int = 8) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... (+{len(keys) - limit} more)' if len(keys) > limit else '')


def check_state_dict(
    state_dict: dict[str, torch.Tensor],
    model: torch.nn.Module,
    *,
    variant: str,
    source: str,
    strict: bool = True,
    features_only: bool = False,
) -> dict[str, torch.Tensor]:
    """Refuse a state dict that would half-load ``model``; report the classifier it does not carry.

    Missing keys other than the classifier's, and keys whose shape differs from the model's (the first conv is
    left to timm, which adapts it to ``in_chans``), raise ``WeightFileError`` with the list; so do unexpected keys
    when ``strict`` (with ``strict=False``, e.g. the HRNet feature models that have no head, timm loads the rest
    and logs them). A file without the classifier (a backbone-only file, e.g. from ``bh-models convert``) loads:
    the classifier keeps its initialisation, with a warning when the model keeps that classifier.

    Returns:
        ``state_dict``, with the model's own initial classifier tensors added where the file has none.
    """
    expected = model.state_dict()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifier = _module_keys(cfg.get('classifier'), expected, ('weight', 'bias'))
    first_conv = _module_keys(cfg.get('first_conv'), expected, ('weight',))
    # timm drops the classifier when the model's num_classes differs from the weights' (and for features_only)
    keeps_classifier = not features_only and getattr(model, 'num_classes', None) == cfg.get('num_classes')
    unchecked = first_conv if keeps_classifier else first_conv | classifier
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f'{k}: file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)}'
        for k in expected
        if k in state_dict and k not in unchecked and state_dict[k].shape != expected[k].shape
    ]
    missing_body = [k for k in missing if k not in classifier]
    problems = []
    if missing_body:
        problems.append(f'{len(missing_body)} key(s) missing: {_shorten(missing_body)}')
    if misshaped:
        problems.append(f'{len(misshaped)} key(s) with another shape: {_shorten(misshaped, 4)}')
    if unexpected and strict:
        problems.append(f'{len(unexpected)} unexpected key(s): {_shorten(unexpected)}')
    if problems:
        if any(k.startswith('backbone.') for k in unexpected):
            hint = (
                "The keys start with 'backbone.': this is an MMDetection checkpoint; convert it first with "
                f'`bh-models convert --model {variant} SRC DST.safetensors`.'
            )
        else:
            hint = (
                f'Use weights made for {variant} (with the num_classes/in_chans they were trained with). To load part '
                'of a file deliberately, create the model with pretrained=False and call '
                'model.load_state_dict(..., strict=False) yourself.'
            )
        raise WeightFileError(f'{source} does not fit {variant}: {"; ".join(problems)}. Nothing was loaded. {hint}')
    missing_classifier = sorted(k for k in missing if k in classifier)
    if missing_classifier:
        state_dict = dict(state_dict)
        for key in missing_classifier:
            state_dict[key] = expected[key].detach().clone()
        message = (
            f'{source} has no classifier ({", ".join(missing_classifier)}): the classifier of {variant} keeps its '
            'random initialisation. Train it, or create the model with num_classes=0 (pooled features) or '
            'features_only=True.'
        )
        if keeps_classifier:
            warnings.warn(message, UserWarning, stacklevel=2)
        else:
            _logger.info(message)
    return state_dict


def guard_state_dict(
    variant: str,
    source: str,
    *,
    strict: bool = True,
    features_only: bool = False,
    user_filter: Callable[..., dict[str, torch.Tensor]] | None = None,
) -> Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]:
    """A ``pretrained_filter_fn`` for timm's ``load_pretrained``: ``user_filter`` if any, then ``check_state_dict``."""

    def _guard(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if user_filter is not None:
            state_dict = user_filter(state_dict, model)
        return check_state_dict(
            state_dict, model, variant=variant, source=source, strict=strict, features_only=features_only
        )

    return _guard


# --- making and checking cards (for whoever publishes a weight) -------------------------------------------


@functools.cache
def measure_backbone(model: str, in_chans: int = 3) -> tuple[float, float]:
    """``(params_m_backbone, gflops_640x512)`` of ``model`` with ``in_chans`` input channels, as cards record them.

    Counted from shapes alone (meta device): ``complexity.count_params`` convention ``'all'`` and the MMCV 1.x /
    ptflops FLOPs of the trunk for one ``in_chans x 512 x 640`` image.
    """
    from .complexity import build_for_scope, count_flops_for_input, count_params
    from .paper import INPUT_SIZE_HW

    trunk = build_for_scope(model, 'backbone', device='meta', in_chans=in_chans)
    params = count_params(trunk)['all'] / 1e6
    flops = count_flops_for_input(trunk, (in_chans, *INPUT_SIZE_HW)) / 1e9
    return round(params, 3), round(flops, 3)


def paper_top1(model: str, dataset: str) -> float | None:
    """The paper's Table 5 top-1 (%) of ``model`` on ``dataset`` (CIFAR-100, ImageNet32, ImageNet), else None."""
    from .paper import TABLE5_TOP1

    key = re.sub(r'[^a-z0-9]', '', dataset.lower())
    key = {'imagenet1k': 'imagenet', 'ilsvrc2012': 'imagenet'}.get(key, key)
    return TABLE5_TOP1.get(model, {}).get(key)


def save_weights(model: torch.nn.Module, path: str | Path) -> Path:
    """Save ``model``'s state dict as a safetensors file, the format cards and the Hub use; returns the path.

    Save the model as it will be loaded: a classifier model with its classifier (``num_classes`` > 0), or
    ``num_classes=0`` for a backbone-only file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != '.safetensors':
        raise ValueError(f'{path}: weights are saved as .safetensors only.')
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata={'format': 'pt'})
    return path


def make_card(
    name: str,
    weights_file: str | Path,
    *,
    dataset: str,
    input_size: tuple[int, int, int],
    mean: Iterable[float],
    std: Iterable[float],
    recipe: str,
    metrics: Mapping[str, float],
    license: str,
    num_classes: int | None = None,
    interpolation: str = 'bilinear',
    crop_pct: float = 1.0,
    hub_repo: str | None = None,
    dataset_hub_id: str | None = None,
    eval_split: str = '',
    label_names: Iterable[str] | None = None,
    description: str = '',
    default: bool = False,
) -> WeightCard:
    """A card for ``weights_file``: sha256, size, params, GFLOPs and the paper's number are computed, not typed.

    Args:
        name: ``<model>.<tag>``.
        weights_file: The safetensors file (a timm state dict of ``model``); the card records its name.
        num_classes: Classifier outputs; default: read from the file (0 when it has no classifier).
        hub_repo: Hub repo name (or ``owner/name``); default ``name``, in the ``BH_MODELS_HUB_ORG`` organisation.

    The other arguments are the card fields of the same name (see ``CARD_FIELDS``). Params and GFLOPs are counted
    from shapes (meta device, well under a second).
    """
    path = Path(weights_file)
    model = split_model_name_tag(name)[0]
    if num_classes is None:
        num_classes = _file_num_classes(path, model)
    params, gflops = measure_backbone(model, input_size[0])
    data = {
        'name': name,
        'description': description,
        'dataset': dataset,
        'dataset_hub_id': dataset_hub_id,
        'eval_split': eval_split,
        'num_classes': num_classes,
        'label_names': list(label_names) if label_names is not None else None,
        'input_size': list(input_size),
        'mean': list(mean),
        'std': list(std),
        'interpolation': interpolation,
        'crop_pct': crop_pct,
        'recipe': recipe,
        'metrics': dict(metrics),
        'paper_top1': paper_top1(model, dataset),
        'params_m_backbone': params,
        'gflops_640x512': gflops,
        'license': license,
        'file': path.name if path.name != f'{name}.safetensors' else None,
        'size_bytes': path.stat().st_size,
        'sha256': sha256_file(path),
        'hub_repo': hub_repo or name,
        'default': default,
    }
    return card_from_dict(data, f'<make_card {name}>')


def write_card(card: WeightCard, directory: str | Path | None = None) -> Path:
    """Write ``card`` as ``<directory>/<name>.json`` (default: the weights directory setting) and return the path."""
    directory = Path(directory) if directory is not None else weights_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (card.name + CARD_SUFFIX)
    path.write_text(json.dumps(card.to_dict(), indent=2) + '\n', encoding='utf-8')
    return path


def _classifier_and_stem(model: str) -> tuple[str, str]:
    base = _ensure_loaded().bases.get(model)
    if base is None:
        raise ValueError(f'{model!r} is not a BH model; registered: {sorted(_REGISTRY.bases)}')
    return base['classifier'], base['first_conv']


def file_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in a safetensors file, read from its header only."""
    with safe_open(str(path), framework='pt') as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)


def _file_num_classes(path: Path, model: str) -> int:
    classifier, _ = _classifier_and_stem(model)
    shape = file_shapes(path).get(f'{classifier}.weight')
    return shape[0] if shape else 0


def check_card(card: WeightCard, directory: str | Path | None = None) -> list[str]:
    """Recompute what a card records and list every disagreement (empty: the card is right).

    Checks the weight file when it is in ``directory`` (default: the cards directory): size, sha256, classifier
    outputs and input channels; and always params and GFLOPs (recounted) and the paper's Table 5 number.
    """
    problems = []
    directory = Path(directory) if directory is not None else cards_dir()
    path = directory / card.filename
    if path.is_file():
        if path.stat().st_size != card.size_bytes:
            problems.append(f'size_bytes: file has {path.stat().st_size}, card says {card.size_bytes}')
        elif sha256_file(path) != card.sha256:
            problems.append(f'sha256: file has {sha256_file(path)}, card says {card.sha256}')
        else:
            classifier, stem = _classifier_and_stem(card.model)
            shapes = file_shapes(path)
            num_classes = shapes[f'{classifier}.weight'][0] if f'{classifier}.weight' in shapes else 0
            if num_classes != card.num_classes:
                problems.append(f'num_classes: file has {num_classes}, card says {card.num_classes}')
            in_chans = shapes.get(f'{stem}.weight', (0, 0))[1]
            if in_chans != card.input_size[0]:
                problems.append(f'input_size[0]: file has {in_chans} input channels, card says {card.input_size[0]}')
    params, gflops = measure_backbone(card.model, card.input_size[0])
    if abs(params - card.params_m_backbone) > 0.0005:
        problems.append(f'params_m_backbone: counted {params}, card says {card.params_m_backbone}')
    if abs(gflops - card.gflops_640x512) > 0.0005:
        problems.append(f'gflops_640x512: counted {gflops}, card says {card.gflops_640x512}')
    paper = paper_top1(card.model, card.dataset)
    if paper != card.paper_top1:
        problems.append(
            f'paper_top1: Table 5 gives {paper} for {card.model} on {card.dataset}, card says {card.paper_top1}'
        )
    return problems


def card_fields_in(text: str) -> list[str]:
    """The ``CARD_FIELDS`` not mentioned (as ``name``) in ``text``: keeps weights/README.md complete."""
    return [key for key in CARD_FIELDS if f'`{key}`' not in text]
