"""``bh-models evaluate NAME.TAG``: top-1/top-5 of published weights, through timm exactly as a user loads them.

The model comes from ``timm.create_model(name, pretrained=True)`` and the images go through timm's eval transform
built from the weight's ``pretrained_cfg`` (``resolve_data_config`` + ``create_transform``): no custom pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader

from .datasets import DATASETS, build_dataset

__all__ = ['evaluate_pretrained', 'main']


def evaluate_pretrained(
    name: str,
    data: str,
    data_dir: str,
    *,
    split: str = 'test',
    batch_size: int = 256,
    workers: int = 2,
    device: str = 'auto',
    weights_file: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``name`` (``model.tag``) on ``split`` of data set ``data``; returns top-1/top-5 (%) and details.

    ``weights_file`` overrides where the weights come from (``pretrained_cfg_overlay=dict(file=...)``).
    """
    import bh_models  # noqa: F401  (registers the BH models and their tags)

    from .train import evaluate_model

    overlay = {'pretrained_cfg_overlay': {'file': weights_file}} if weights_file else {}
    model = timm.create_model(name, pretrained=True, **overlay)
    config = resolve_data_config({}, model=model)
    dataset = build_dataset(data, data_dir, split, create_transform(**config, is_training=False))
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dev = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    metrics = evaluate_model(model.to(dev), loader, dev)
    return {
        'model': name,
        'data': data,
        'split': split,
        **metrics,
        'device': str(dev),
        'data_config': {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``bh-models evaluate``."""
    parser = argparse.ArgumentParser(
        prog='bh-models evaluate',
        description="Top-1/top-5 of a published weight (timm.create_model(pretrained=True) + timm's eval transform).",
    )
    parser.add_argument('name', help='model.tag, e.g. bh_resnet50.fmnist')
    parser.add_argument('--data', required=True, choices=sorted(DATASETS))
    parser.add_argument('--data-dir', required=True)
    parser.add_argument('--split', default='test', choices=('train', 'test'), help='"test": the held-out split')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda')
    parser.add_argument('--weights', default=None, help="a local safetensors file instead of the card's")
    parser.add_argument('--json', action='store_true', help='print the result as JSON')
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    result = evaluate_pretrained(
        args.name,
        args.data,
        args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        weights_file=args.weights,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f'{args.name} on {args.data} {args.split} ({result["images"]} images): top-1 {result["top1"]:.2f} %, '
            f'top-5 {result["top5"]:.2f} %'
        )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
