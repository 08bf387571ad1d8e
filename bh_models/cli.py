"""The ``bh-models`` command: one sub-command per job, each owned by its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command -> ('module' or 'module:function' whose function (default ``main``) takes argv and returns an exit code,
#                one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    'benchmark': ('benchmarks.paper_table', "params and GFLOPs at 640x512 against the paper's Table 4"),
    'design': ('bh_models.design', 'reconstruct the BH-HRNet layouts against Table 4 (`design hrnet`)'),
    'list': ('bh_models.cli', 'list the registered BH models'),
    'export': ('bh_models.hub', 'write the Hub folder (config.json, model.safetensors, README.md) of a weight'),
    'publish': ('bh_models.hub:publish_main', 'upload an exported folder to the Hugging Face Hub'),
    'train': ('bh_models.train', 'pre-train a model on Fashion-MNIST, CIFAR-100, ImageNet32 or an image folder'),
    'evaluate': ('bh_models.evaluate', "top-1/top-5 of a published weight with timm's eval transform"),
    'convert': ('bh_models.convert', "convert the authors' MMDetection checkpoint to a safetensors backbone"),
}


def _list_main(argv: Sequence[str]) -> int:
    from .factory import list_models

    parser = argparse.ArgumentParser(prog='bh-models list', description='List the registered BH models.')
    parser.add_argument('--pretrained', action='store_true', help='list name.tag of the weights instead')
    args = parser.parse_args(argv)
    for name in list_models(pretrained=args.pretrained):
        print(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``bh-models <command> [args]`` to the command's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help') or argv[0] not in COMMANDS:
        lines = '\n'.join(f'  {name:<10} {text}' for name, (_, text) in COMMANDS.items())
        print(f'usage: bh-models <command> [options]\n\ncommands:\n{lines}\n\n`bh-models <command> -h` for options.')
        if argv and argv[0] not in ('-h', '--help'):
            print(f'\nbh-models: unknown command {argv[0]!r}', file=sys.stderr)
            return 2
        return 0
    command, rest = argv[0], argv[1:]
    if command == 'list':
        return _list_main(rest)
    module_name, _, function = COMMANDS[command][0].partition(':')
    entry = getattr(importlib.import_module(module_name), function or 'main')
    return int(entry(rest) or 0)


if __name__ == '__main__':
    raise SystemExit(main())
