"""Where pretrained weights come from (a local file, the Hugging Face Hub), and exporting/publishing them.

Loading order for a card's tag (``timm.create_model('bh_resnet50.<tag>', pretrained=True)``):

1. ``<weights dir>/<file>`` when present (a checkout, torch.hub's ``source='local'``), checked against the card;
2. else ``model.safetensors`` of the card's Hub repo, through huggingface_hub's cache (offline: the cache only),
   checked against the card.

Either way timm's own ``load_pretrained`` loads the checked file (``pretrained_cfg['file']``); the ``hf-hub:`` and
``local-dir:`` routes of an exported folder are checked against the sha256 its ``config.json`` records. Missing
weights offline raise ``WeightsUnavailableError`` naming the repo, the cache path and three ways to get them.

``bh-models export`` writes the Hub folder (``config.json``, ``model.safetensors``, ``README.md``) of a card's tag
or of a safetensors file; ``bh-models publish`` uploads it with huggingface_hub.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import HF_SAFE_WEIGHTS_NAME, hf_split, save_config_for_hf
from timm.models._registry import is_model, split_model_name_tag

from .weights import (
    WEIGHTS_DIR_ENV,
    WeightCard,
    WeightFileError,
    card_for_hub_repo,
    card_from_dict,
    cards_dir,
    file_shapes,
    get_card,
    hub_org,
    list_cards,
    sha256_file,
    verify_weight_file,
)

__all__ = [
    'EXPORT_FILES',
    'WeightsUnavailableError',
    'card_weight_file',
    'check_exported_folder',
    'export_folder',
    'hub_cache_folder',
    'hub_file',
    'main',
    'publish_folder',
    'publish_main',
    'resolve_pretrained_source',
]

CONFIG_NAME = 'config.json'
README_NAME = 'README.md'
EXPORT_FILES = (CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, README_NAME)  # exactly what an exported folder holds
META_KEY = 'bh_models'  # our block in config.json (timm ignores unknown top-level keys)
CITATION = """@inproceedings{ning2023rethinking,
  title={Rethinking the Backbone Architecture for Tiny Object Detection},
  author={Ning, Jinlai and Guan, Haoyan and Spratling, Michael},
  booktitle={Proceedings of the 18th International Joint Conference on Computer Vision, Imaging and Computer
             Graphics Theory and Applications (VISAPP)},
  year={2023},
  note={arXiv:2303.11267}
}"""


class WeightsUnavailableError(FileNotFoundError):
    """The weights are neither in the weights directory nor in the Hub cache, and cannot be downloaded."""


# --- resolving the weight file ------------------------------------------------------------------------------


def hub_cache_folder(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """The huggingface_hub cache folder of a model repo (``<HF_HUB_CACHE>/models--<org>--<name>``)."""
    return Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type='model')


def _three_ways(repo_id: str, folder: Path, card: WeightCard | None) -> str:
    load = f"timm.create_model('{card.name}', pretrained=True)" if card else f"timm.create_model('hf-hub:{repo_id}')"
    if card is not None:
        second = (
            f'  2. put the file in the weights directory ({WEIGHTS_DIR_ENV}): save model.safetensors of '
            f'{repo_id} as {cards_dir() / card.filename} (sha256 {card.sha256}, {card.size_bytes} bytes);\n'
        )
    else:
        second = (
            f'  2. load a folder exported with `bh-models export` or downloaded from {repo_id}: '
            f"timm.create_model('local-dir:/path/to/folder', pretrained=True);\n"
        )
    return (
        'Get the weights in one of three ways:\n'
        f'  1. fill the Hub cache once, online: `hf download {repo_id}` or {load} without HF_HUB_OFFLINE; or copy '
        f'{folder} from a machine that has it (HF_HOME / HF_HUB_CACHE select the cache);\n'
        f'{second}'
        f"  3. point at a copy of the file: timm.create_model('{card.name if card else 'bh_...'}', pretrained=True, "
        "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors'))."
    )


def hub_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    card: WeightCard | None = None,
) -> Path:
    """A file of a Hub model repo, through huggingface_hub's cache (``hf_hub_download``; offline: cache only).

    Raises:
        WeightsUnavailableError: Not cached and the Hub cannot be reached (or has no such repo or file); the message
            names the repo, the cache path and the three ways to get the weights.
    """
    folder = hub_cache_folder(repo_id, cache_dir)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:
        why = 'HF_HUB_OFFLINE=1 is set' if constants.is_offline_mode() else 'the Hugging Face Hub could not be reached'
        problem = f'{filename} is not in the Hub cache and {why}'
        cause: Exception = e
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        problem = f'the Hub has no {filename} in {repo_id} (revision {revision or "main"}): {type(e).__name__}'
        cause = e
    name = card.name if card else f'hf-hub:{repo_id}'
    local = f'\n  local file: {cards_dir() / card.filename} (absent)' if card else ''
    raise WeightsUnavailableError(
        f'{name}: {problem}.\n'
        f'  Hub repo:   {repo_id} (file {filename}, revision {revision or "main"})\n'
        f'  Hub cache:  {folder}{local}\n' + _three_ways(repo_id, folder, card)
    ) from cause


def card_weight_file(card: WeightCard, cache_dir: str | Path | None = None, hf_hub_id: str | None = None) -> Path:
    """The checked weight file of ``card``: the local copy in the weights directory, else the Hub's (cached).

    Args:
        card: The weight's card.
        cache_dir: huggingface_hub cache directory (default: its setting, ``HF_HUB_CACHE`` / ``HF_HOME``).
        hf_hub_id: The repo to use (default: the card's, with the current organisation setting).

    Raises:
        WeightFileError: The file found has another size or sha256 than the card records.
        WeightsUnavailableError: No local file, not cached, and no Hub download possible.
    """
    local = cards_dir() / card.filename
    repo_id, revision = hf_split(hf_hub_id or card.hf_hub_id)
    if local.exists():
        return verify_weight_file(
            local,
            sha256=card.sha256,
            size_bytes=card.size_bytes,
            what=f'local weight file of {card.name}',
            fix=f'Delete it to load the Hub copy ({repo_id}), or replace it with the published file.',
        )
    path = hub_file(repo_id, HF_SAFE_WEIGHTS_NAME, revision=revision, cache_dir=cache_dir, card=card)
    return verify_weight_file(
        path,
        sha256=card.sha256,
        size_bytes=card.size_bytes,
        what=f'Hub file of {card.name} ({repo_id}, cached)',
        fix=f'Delete {hub_cache_folder(repo_id, cache_dir)} and load it again online to re-download it.',
    )


def _exported_meta(config_path: Path) -> dict[str, Any] | None:
    try:
        config = json.loads(config_path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise WeightFileError(f'{config_path} is not a readable config.json: {e}') from e
    meta = config.get(META_KEY)
    return meta if isinstance(meta, dict) else None


def _check_exported_weights(folder: Path, what: str, fix: str, card: WeightCard | None = None) -> Path:
    """Check ``folder/model.safetensors`` against the card or the sha256 its ``config.json`` records."""
    meta = _exported_meta(folder / CONFIG_NAME) or {}
    sha256, size = (card.sha256, card.size_bytes) if card else (meta.get('sha256'), meta.get('size_bytes'))
    return verify_weight_file(folder / HF_SAFE_WEIGHTS_NAME, sha256=sha256, size_bytes=size, what=what, fix=fix)


def resolve_pretrained_source(
    variant: str,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """Find and check the weight file a ``pretrained=True`` build will load; timm's ``load_pretrained`` loads it.

    * a card's tag: the local file, else the Hub's (see the module docstring); the returned overlay sets ``file``;
    * ``hf-hub:`` of a folder exported by ``bh-models export``: its ``model.safetensors`` from the cache, checked
      against its card (if registered) or its ``config.json``; the overlay sets ``file`` (and clears ``source``);
    * ``local-dir:``: the folder's ``model.safetensors`` is checked, timm loads the folder;
    * ``pretrained_cfg_overlay=dict(file=...)``: the file's header is checked (no sha256 is known for it).

    Returns:
        The ``pretrained_cfg_overlay`` to build with, and a description of the source for messages.
    """
    overlay = dict(pretrained_cfg_overlay or {})
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    if cfg.source == 'hf-hub' and cfg.hf_hub_id:
        return _resolve_hub_export(cfg.hf_hub_id, cfg.hf_hub_filename, overlay, cache_dir)
    if cfg.source == 'local-dir' and cfg.file:
        folder = Path(cfg.file)
        if (folder / HF_SAFE_WEIGHTS_NAME).exists():
            _check_exported_weights(
                folder, f'weight file of local-dir:{folder}', 'Export the folder again (`bh-models export`).'
            )
        return overlay or None, f'local-dir:{folder}'
    if cfg.state_dict is not None:
        return overlay or None, 'the state_dict given in pretrained_cfg'
    if cfg.file:
        verify_weight_file(cfg.file, what='weight file')
        return overlay or None, str(cfg.file)
    card = get_card(f'{variant}.{cfg.tag}') if cfg.tag else None
    if card is not None and not (overlay.get('hf_hub_id') or overlay.get('url')):
        path = card_weight_file(card, cache_dir, hf_hub_id=cfg.hf_hub_id)
        return {**overlay, 'file': str(path)}, str(path)
    return overlay or None, cfg.hf_hub_id or str(cfg.url or '')


def _resolve_hub_export(
    hf_hub_id: str, filename: str | None, overlay: dict[str, Any], cache_dir: str | Path | None
) -> tuple[dict[str, Any] | None, str]:
    repo_id, revision = hf_split(hf_hub_id)
    card = card_for_hub_repo(hf_hub_id)
    meta = _exported_meta(hub_file(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir, card=card))
    if meta is None and card is None:
        # not exported by bh-models: timm's own Hub loading (the state-dict guard still checks the keys)
        return overlay or None, f'hf-hub:{hf_hub_id}'
    filename = filename or HF_SAFE_WEIGHTS_NAME
    path = hub_file(repo_id, filename, revision=revision, cache_dir=cache_dir, card=card)
    sha256, size = (card.sha256, card.size_bytes) if card else (meta.get('sha256'), meta.get('size_bytes'))
    verify_weight_file(
        path,
        sha256=sha256,
        size_bytes=size,
        what=f'Hub file {repo_id}/{filename} (cached)',
        fix=f'Delete {hub_cache_folder(repo_id, cache_dir)} and load it again online to re-download it.',
    )
    # load exactly the checked file: timm's 'file' source (an 'hf-hub' source would resolve the repo again)
    return {**overlay, 'file': str(path), 'source': None}, f'hf-hub:{hf_hub_id} ({path})'


# --- export -----------------------------------------------------------------------------------------------


def _model_card(name: str, arch: str, card: WeightCard | None, sha256: str, size: int, config: dict) -> str:
    repo = card.hf_hub_id if card else '<org>/<repo>'
    tags = ['image-classification', 'timm', 'bh-models', 'tiny-object-detection', 'backbone']
    pretrained_cfg = config['pretrained_cfg']
    if card is not None:
        top1 = card.metrics.get('top1')
        eval_results = (
            [
                EvalResult(
                    task_type='image-classification',
                    dataset_type=card.dataset_hub_id or card.dataset.lower(),
                    dataset_name=card.dataset,
                    dataset_split=card.eval_split or None,
                    metric_type='accuracy',
                    metric_name='top-1 accuracy (%)',
                    metric_value=top1,
                )
            ]
            if top1 is not None
            else None
        )
        data = ModelCardData(
            library_name='timm',
            license=card.license,
            tags=tags,
            datasets=[card.dataset_hub_id] if card.dataset_hub_id else None,
            metrics=['accuracy'] if card.metrics else None,
            pipeline_tag='image-classification',
            model_name=name,
            eval_results=eval_results,
        )
        paper = f'{card.paper_top1} %' if card.paper_top1 is not None else 'none (the paper has no number for this)'
        metrics = ', '.join(f'{k} {v} %' for k, v in card.metrics.items()) or 'none (backbone only)'
        rows = [
            ('data set', f'{card.dataset}' + (f' (`{card.dataset_hub_id}`)' if card.dataset_hub_id else '')),
            ('measured', f'{metrics}' + (f' on {card.eval_split}' if card.eval_split else '')),
            ("paper's top-1 (Table 5)", paper),
            ('recipe', f'`{card.recipe}`'),
        ]
        cost = [
            ('params (backbone, BN included, no classifier)', f'{card.params_m_backbone} M'),
            ('GFLOPs at 640x512 (trunk, MMCV 1.x / ptflops multiply-adds)', f'{card.gflops_640x512}'),
        ]
        intro = card.description or f'{arch} trained on {card.dataset}.'
    else:
        data = ModelCardData(library_name='timm', license='other', tags=tags, pipeline_tag='image-classification')
        rows = [('weight card', 'none: data set, recipe, metrics and license are not recorded')]
        cost = []
        intro = f'{arch} weights exported without a weight card (see weights/README.md of bh-models to add one).'
    rows = [
        ('architecture', f'`{arch}`'),
        ('classes', str(config['num_classes'])),
        (
            'input',
            f'{" x ".join(map(str, pretrained_cfg["input_size"]))}, mean {pretrained_cfg["mean"]}, '
            f'std {pretrained_cfg["std"]}, {pretrained_cfg["interpolation"]}, crop_pct {pretrained_cfg["crop_pct"]}',
        ),
        *rows,
        *cost,
        ('file', f'model.safetensors, {size} bytes, sha256 `{sha256}`'),
        ('license', data.license),
    ]
    table = '\n'.join(f'| {k} | {v} |' for k, v in rows)
    body = f"""
# {name}

{intro}

A bottom-heavy (BH) backbone for tiny object detection (Ning, Guan, Spratling, *Rethinking the Backbone Architecture
for Tiny Object Detection*, VISAPP 2023, arXiv:2303.11267), as a [timm](https://github.com/huggingface/pytorch-image-models)
model registered by the `bh-models` package.

## Model details

| | |
|---|---|
{table}

## Usage

timm has no plugin discovery: `import bh_models` first, it registers the BH architectures in timm.

```python
import bh_models  # registers bh_* in timm
import timm

model = timm.create_model('hf-hub:{repo}', pretrained=True)
backbone = timm.create_model('hf-hub:{repo}', pretrained=True, features_only=True)  # strides 2, 4, 8, 16, 32
```

## Citation

```bibtex
{CITATION}
```
"""
    return f'---\n{data.to_yaml()}\n---\n{body}'


def _expected_shapes(arch: str, **kwargs: Any) -> dict[str, tuple[int, ...]]:
    import timm

    with torch.device('meta'):
        model = timm.create_model(arch, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def export_folder(
    model_name: str,
    out_dir: str | Path,
    *,
    weights: str | Path | None = None,
    card: WeightCard | None = None,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """Write the Hub folder of a weight: ``config.json``, ``model.safetensors``, ``README.md``, as timm reads it.

    ``model.safetensors`` is a byte copy of the checked weight file (its sha256 is the card's); ``config.json`` is
    timm's ``save_config_for_hf`` of the model loaded from it, plus a ``bh_models`` block (sha256, size, card);
    ``README.md`` is a model card with YAML metadata generated from the card.

    Args:
        model_name: ``<model>.<tag>`` of a registered card, or ``<model>`` with ``weights``.
        out_dir: The folder to write (must not exist, or be empty, unless ``overwrite``).
        weights: A safetensors file to export instead of the card's (checked against the card when there is one);
            without a card, ``num_classes`` and ``in_chans`` are read from the file.
        card: A card for ``weights`` that is not registered (yet); default: the registered card of ``model_name``.
        overwrite: Replace an existing ``out_dir``.
        cache_dir: huggingface_hub cache directory for a card's Hub file.

    Returns:
        ``out_dir``.
    """
    import timm

    from . import __version__

    arch, tag = split_model_name_tag(model_name)
    if not arch.startswith('bh_') or not is_model(arch):
        raise ValueError(f'{arch!r} is not a registered BH model; choose from {timm.list_models("bh_*")}.')
    card = card or (get_card(model_name) if tag else None)
    if card is not None and card.model != arch:
        raise ValueError(f'the card {card.name} is for {card.model}, not {arch}.')
    if weights is None and card is None:
        cards = ', '.join(list_cards()) or 'none'
        raise ValueError(
            f'no weight card for {model_name!r} (registered: {cards}); export a file with '
            f'`--model {arch} --weights FILE.safetensors`, or add a card (weights/README.md).'
        )
    if weights is not None:
        src = Path(weights)
        if src.suffix != '.safetensors':
            raise ValueError(
                f'{src} is not a .safetensors file; the Hub gets safetensors only. Convert it first: '
                f'`bh-models convert --model {arch} {src} OUT.safetensors`.'
            )
        if card is not None:
            verify_weight_file(src, sha256=card.sha256, size_bytes=card.size_bytes, what=f'weight file of {card.name}')
        else:
            verify_weight_file(src)
    else:
        assert card is not None
        src = card_weight_file(card, cache_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f'{out_dir} exists and is not empty; choose another folder or pass overwrite (--force).')

    shapes = file_shapes(src)
    if card is not None:
        kwargs: dict[str, Any] = dict(num_classes=card.num_classes, in_chans=card.input_size[0])
        overlay: dict[str, Any] = dict(file=str(src))
        create_name = card.name if get_card(card.name) == card else arch
        if create_name == arch:  # an unregistered card: its cfg on top of the architecture's
            overlay = {**card.pretrained_cfg({}), 'tag': card.tag, 'hf_hub_id': None, **overlay}
    else:
        base = timm.models.get_pretrained_cfg(arch)
        classifier, stem = base.classifier, base.first_conv
        in_chans = shapes.get(f'{stem}.weight', (0, 3))[1]
        kwargs = dict(num_classes=shapes.get(f'{classifier}.weight', (0,))[0], in_chans=in_chans)
        overlay = dict(file=str(src), input_size=(in_chans, *base.input_size[1:]))
        if in_chans != len(base.mean):  # timm's own rule: one mean/std, the average, repeated per channel
            overlay |= dict(mean=(sum(base.mean) / len(base.mean),) * in_chans)
            overlay |= dict(std=(sum(base.std) / len(base.std),) * in_chans)
        create_name = arch
    expected = _expected_shapes(arch, **kwargs)
    if shapes != expected:
        missing = sorted(set(expected) - set(shapes))
        extra = sorted(set(shapes) - set(expected))
        other = sorted(k for k in set(shapes) & set(expected) if shapes[k] != expected[k])
        raise WeightFileError(
            f'{src} is not a complete {arch} state dict with {kwargs}: missing {missing[:8]}, unexpected '
            f'{extra[:8]}, other shapes {other[:8]}. Only complete weights are exported.'
        )
    model = timm.create_model(create_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    sha256, size = sha256_file(src), src.stat().st_size

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f'.{out_dir.name}.') as tmp:
        staging = Path(tmp) / 'folder'
        staging.mkdir()
        shutil.copyfile(src, staging / HF_SAFE_WEIGHTS_NAME)
        if sha256_file(staging / HF_SAFE_WEIGHTS_NAME) != sha256:
            raise WeightFileError(f'copying {src} to {staging} changed its bytes; nothing was exported.')
        meta = {
            'name': card.name if card else arch,
            'file': HF_SAFE_WEIGHTS_NAME,
            'sha256': sha256,
            'size_bytes': size,
            'card': card.to_dict() if card else None,
            'exported_by': f'bh-models {__version__}',
        }
        save_config_for_hf(model, staging / CONFIG_NAME, model_config={META_KEY: meta})
        config = json.loads((staging / CONFIG_NAME).read_text(encoding='utf-8'))
        text = _model_card(meta['name'], arch, card, sha256, size, config)
        ModelCard(text).save(staging / README_NAME)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    return out_dir


# --- publish ----------------------------------------------------------------------------------------------


def check_exported_folder(folder: str | Path) -> dict[str, Any]:
    """Check a folder before publishing: exactly ``EXPORT_FILES``, a BH ``config.json``, weights matching their
    recorded sha256, a README with timm's YAML metadata. Returns the parsed ``config.json``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder} is not a folder; create it with `bh-models export`.')
    present = sorted(p.name for p in folder.iterdir())
    missing = [n for n in EXPORT_FILES if n not in present]
    extra = [n for n in present if n not in EXPORT_FILES]
    if missing or extra:
        raise ValueError(
            f'{folder} must hold exactly {list(EXPORT_FILES)} (as `bh-models export` writes it): '
            f'missing {missing}, unexpected {extra}.'
        )
    config = json.loads((folder / CONFIG_NAME).read_text(encoding='utf-8'))
    arch = config.get('architecture', '')
    if not (arch.startswith('bh_') and is_model(arch)) or 'pretrained_cfg' not in config or META_KEY not in config:
        raise ValueError(f'{folder / CONFIG_NAME} is not a bh-models export (architecture {arch!r}); export it again.')
    _check_exported_weights(folder, f'weight file of {folder}', 'Export the folder again (`bh-models export`).')
    data = ModelCard.load(folder / README_NAME).data
    if data.library_name != 'timm':
        raise ValueError(f'{folder / README_NAME} lacks the YAML metadata `library_name: timm`; export it again.')
    return config


def _size(n: int) -> str:
    for unit in ('B', 'kB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1000
    return ''


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    dry_run: bool = False,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    echo: Callable[[str], None] = print,
) -> str:
    """Upload an exported folder to a Hub model repo with huggingface_hub's ``upload_folder``.

    The folder is checked first (``check_exported_folder``). The token comes from the environment (``HF_TOKEN``;
    else huggingface_hub's stored login). ``dry_run`` prints what would be pushed and contacts nobody.

    Returns:
        The commit URL, or ``''`` for a dry run.
    """
    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f'invalid Hub repo id {repo_id!r}: {e}') from e
    if '/' not in repo_id:
        raise ValueError(f'give the full repo id, "<owner>/{repo_id}" (e.g. "{hub_org()}/{repo_id}").')
    config = check_exported_folder(folder)
    meta = config[META_KEY]
    card = meta.get('card')
    notes = []
    if card is None:
        notes.append('note: no weight card: the model card records no data set, metrics or license')
    else:
        expected = card_from_dict(card, f'{CONFIG_NAME} of {folder}').hf_hub_id
        if expected.split('@')[0] != repo_id:
            notes.append(
                f'note: the card of {meta["name"]} points at {expected}; the tag route will not find {repo_id}'
            )
    token = get_token()
    url = f'{constants.ENDPOINT}/{repo_id}'
    lines = [
        f'{"dry run: would push" if dry_run else "pushing"} {folder} to {url} (model repo, created if missing, '
        f'private={private}, revision {revision or "main"}):'
    ]
    for path in sorted(folder.iterdir()):
        sha = f'  sha256 {meta["sha256"]}' if path.name == HF_SAFE_WEIGHTS_NAME else ''
        lines.append(f'  {path.name:<18} {_size(path.stat().st_size):>9}{sha}')
    lines += notes
    lines.append(f'token: {"found" if token else "none (set HF_TOKEN, or `hf auth login`, before the real push)"}')
    if dry_run:
        lines.append('dry run: nothing was uploaded.')
        echo('\n'.join(lines))
        return ''
    if not token:
        raise PermissionError(
            f'no Hugging Face token to push {folder} to {repo_id}: set HF_TOKEN (a write token) or run '
            '`hf auth login`; `--dry-run` shows what would be pushed.'
        )
    echo('\n'.join(lines))
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        commit_message=commit_message or f'Add {meta["name"]} (bh-models export)',
    )
    echo(f'pushed: {info.commit_url}')
    return str(info.commit_url)


# --- commands ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``bh-models export``: write the Hub folder of a weight."""
    parser = argparse.ArgumentParser(
        prog='bh-models export',
        description='Write a Hub-ready folder (config.json, model.safetensors, README.md) for a weight.',
    )
    parser.add_argument('--model', required=True, help='<model>.<tag> of a weight card, or <model> with --weights')
    parser.add_argument('--weights', help='a .safetensors file to export (no card needed)')
    parser.add_argument('--force', action='store_true', help='replace OUT_DIR if it exists')
    parser.add_argument('out_dir', help='the folder to write')
    args = parser.parse_args(argv)
    try:
        out = export_folder(args.model, args.out_dir, weights=args.weights, overwrite=args.force)
    except (ValueError, FileExistsError, FileNotFoundError, WeightFileError) as e:
        print(f'bh-models export: {e}', file=sys.stderr)
        return 1
    meta = json.loads((out / CONFIG_NAME).read_text(encoding='utf-8'))[META_KEY]
    print(f'exported {meta["name"]} to {out}:')
    for path in sorted(out.iterdir()):
        print(f'  {path.name:<18} {_size(path.stat().st_size):>9}')
    print(f'sha256 of model.safetensors: {meta["sha256"]}')
    print(f"load it:    timm.create_model('local-dir:{out.resolve()}', pretrained=True)  (after `import bh_models`)")
    print(f'publish it: bh-models publish {out} --repo-id <owner>/<name> [--dry-run]')
    return 0


def publish_main(argv: Sequence[str] | None = None) -> int:
    """``bh-models publish``: upload an exported folder to the Hub (``--dry-run``: print only)."""
    parser = argparse.ArgumentParser(
        prog='bh-models publish',
        description='Upload a folder written by `bh-models export` to a Hugging Face model repo (token: HF_TOKEN).',
    )
    parser.add_argument('folder', help='the exported folder')
    parser.add_argument('--repo-id', required=True, help='<owner>/<name> of the model repo')
    parser.add_argument('--dry-run', action='store_true', help='print what would be pushed; contact nobody')
    parser.add_argument('--private', action='store_true', help='create the repo private')
    parser.add_argument('--revision', help='branch to push to (default main)')
    parser.add_argument('--message', help='commit message')
    args = parser.parse_args(argv)
    try:
        publish_folder(
            args.folder,
            args.repo_id,
            dry_run=args.dry_run,
            private=args.private,
            revision=args.revision,
            commit_message=args.message,
        )
    except (ValueError, FileNotFoundError, PermissionError, WeightFileError) as e:
        print(f'bh-models publish: {e}', file=sys.stderr)
        return 1
    return 0
