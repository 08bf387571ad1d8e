"""``bh-models train``: image-classification pre-training of any timm model, on timm's and torch's pieces.

timm: ``create_model``, ``create_optimizer_v2``, ``create_scheduler_v2``, ``create_transform`` (the eval transform,
from the same data config a published weight's ``pretrained_cfg`` carries), ``RandomErasing``, ``Mixup``, the label
smoothing losses. torch: ``DataLoader``, ``DistributedDataParallel`` + ``DistributedSampler`` under ``torchrun``
(NCCL on GPUs, gloo on CPUs), bf16 autocast and channels_last on CUDA.

Geometry: images are resized once to ``--img-size`` (bilinear; Fashion-MNIST 28 -> 32, the smallest input a
stride-32 BH model takes), and training crops are taken at that size (zero-padded random crop + flip), so the eval
transform a weight card records (resize to ``img_size``, ``crop_pct`` 1.0) sees images at the training scale.

``--batch-size`` is the global batch: under ``torchrun --nproc_per_node N`` each process takes ``batch/N``, so the
recipe (and its learning rate) does not change with the number of processes.

Per epoch the output folder gets ``checkpoint.safetensors`` (weights) + ``checkpoint_state.pt`` (epoch, optimizer,
scheduler, RNG; read back with ``torch.load(weights_only=True)``), and ``history.json``; ``--resume`` continues
from them. At the end ``final.json`` holds the numbers, and ``--export NAME.TAG`` writes the weight file (fp16 when
that costs no accuracy) and its card into the weights directory through ``bh_models.weights``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from timm.data import Mixup, create_transform, resolve_data_config
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms as T

from .datasets import DATASETS, build_dataset, dataset_info, label_names
from .weights import save_weights

__all__ = ['evaluate_model', 'main', 'train', 'train_transform', 'data_config']

CHECKPOINT = 'checkpoint.safetensors'
CHECKPOINT_STATE = 'checkpoint_state.pt'
MIN_INPUT = 32  # total stride of the BH models: a smaller image has no stage-4 pixel


# ----------------------------------------------------------------------------------------------------------- setup
@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (world 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the ``torchrun`` job described by the environment, if any; pick this process's device."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = device == 'cuda' or (device == 'auto' and torch.cuda.is_available())
    if device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('bh-models train: --device cuda asked for, but torch.cuda.is_available() is False')
    dev = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1:
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    return Dist(0, 1, 0, dev)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (each process adds its rank before calling)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_config(data: str, img_size: int) -> dict[str, Any]:
    """The timm data config of a model trained by this command: what its weight card and ``pretrained_cfg`` say."""
    info = DATASETS[data]
    return {
        'input_size': (info.channels, img_size, img_size),
        'mean': info.mean,
        'std': info.std,
        'interpolation': 'bilinear',
        'crop_pct': 1.0,
        'crop_mode': 'center',
    }


def train_transform(cfg: dict[str, Any], pad_frac: float = 0.125, hflip: float = 0.5, reprob: float = 0.0) -> Any:
    """Training transform at the eval geometry: resize to the input size, padded random crop, flip, erasing."""
    channels, size, _ = cfg['input_size']
    steps: list[Any] = [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)]
    pad = round(size * pad_frac)
    steps.append(T.RandomCrop(size, padding=pad) if pad else T.CenterCrop(size))
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    steps += [T.ToTensor(), T.Normalize(cfg['mean'], cfg['std'])]
    if reprob > 0:
        steps.append(RandomErasing(reprob, mode='pixel', device='cpu'))
    return T.Compose(steps)


def _loader(dataset: Dataset, batch: int, shuffle: bool, ctx: Dist, workers: int, seed: int) -> DataLoader:
    sampler = (
        DistributedSampler(dataset, ctx.world, ctx.rank, shuffle=shuffle, seed=seed, drop_last=True)
        if (shuffle and ctx.world > 1)
        else None
    )
    generator = torch.Generator().manual_seed(seed + ctx.rank)
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == 'cuda',
        drop_last=shuffle,
        persistent_workers=workers > 0,
        generator=generator,
    )


def _autocast(device: torch.device, amp: bool) -> Any:
    return torch.autocast('cuda', dtype=torch.bfloat16) if amp and device.type == 'cuda' else nullcontext()


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate_model(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 (%) and the image count of ``model`` over ``loader``, summed over all processes of a job."""
    model.eval()
    hits_sum = torch.zeros(2, dtype=torch.float64, device=device)  # top-1, top-5 hits (no host sync per batch)
    images_seen = 0
    with torch.no_grad(), _autocast(device, amp):
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = model(images)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(targets[:, None])
            hits_sum += torch.stack([hits[:, 0].sum(), hits.any(1).sum()]).double()
            images_seen += len(targets)
    counts = torch.cat([torch.tensor([float(images_seen)], dtype=torch.float64), hits_sum.cpu()]).to(device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    n, top1, top5 = counts.tolist()
    return {'top1': 100.0 * top1 / max(n, 1), 'top5': 100.0 * top5 / max(n, 1), 'images': int(n)}


def _val_loader(dataset: Dataset, batch: int, ctx: Dist, workers: int) -> DataLoader:
    """Each process evaluates its own strided share, every image exactly once (no sampler padding)."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world)) if ctx.world > 1 else dataset
    return DataLoader(shard, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=ctx.device.type == 'cuda')


# -------------------------------------------------------------------------------------------------- checkpointing
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def save_checkpoint(out: Path, model: nn.Module, state: dict[str, Any]) -> None:
    """Weights as safetensors, the rest (optimizer, scheduler, RNG, history) as a tensors-and-plain-values pickle."""
    weights, rest = out / CHECKPOINT, out / CHECKPOINT_STATE
    save_weights(_unwrap(model), weights.with_suffix('.tmp.safetensors')).replace(weights)
    torch.save(state, rest.with_suffix('.tmp'))
    rest.with_suffix('.tmp').replace(rest)


def load_checkpoint(out: Path, model: nn.Module) -> dict[str, Any] | None:
    """Restore the weights from ``out`` and return the saved state, or None when there is no checkpoint."""
    weights, rest = out / CHECKPOINT, out / CHECKPOINT_STATE
    if not weights.is_file() or not rest.is_file():
        return None
    _unwrap(model).load_state_dict(load_file(str(weights)), strict=True)
    return torch.load(rest, map_location='cpu', weights_only=True)


# ------------------------------------------------------------------------------------------------------- training
def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=0.5 if interactive else 30, dynamic_ncols=True)


def _export(
    model: nn.Module,
    args: argparse.Namespace,
    cfg: dict[str, Any],
    val: DataLoader,
    ctx: Dist,
    reference: dict[str, float],
    labels: list[str] | None,
    command: str,
) -> dict[str, Any]:
    """Write the weight file (fp16 unless that loses > 0.05 top-1 points) and its card through bh_models.weights.

    Called by every process of a job: the fp16 check evaluates each one's shard of the test set and sums them, as
    ``reference`` (the final fp32 evaluation) did; only rank 0 writes. Returns what was written (empty elsewhere).
    """
    from .weights import make_card, weights_dir, write_card

    directory = Path(args.export_dir) if args.export_dir else weights_dir()
    path = directory / f'{args.export}.safetensors'
    net = _unwrap(model)
    fp32 = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.half().float()  # the weights as an fp16 file would give them back
    half_metrics = evaluate_model(net, val, ctx.device, amp=False)
    keep_half = half_metrics['top1'] >= reference['top1'] - 0.05
    metrics = half_metrics if keep_half else reference
    if not keep_half:
        net.load_state_dict(fp32)
    if not ctx.main:
        return {}
    save_weights(net.half() if keep_half else net, path)
    net.float()
    info = DATASETS[args.data]
    card = make_card(
        args.export,
        path,
        dataset=info.title,
        input_size=cfg['input_size'],
        mean=cfg['mean'],
        std=cfg['std'],
        interpolation=cfg['interpolation'],
        crop_pct=cfg['crop_pct'],
        recipe=f'{args.recipe_note} {command}'.strip(),
        metrics={'top1': round(metrics['top1'], 2), 'top5': round(metrics['top5'], 2)},
        license=args.license,
        dataset_hub_id=info.hub_id,
        eval_split=info.eval_split,
        label_names=labels,
        description=f'{args.model} trained from scratch on {info.title} by `bh-models train` '
        f'({"fp16" if keep_half else "fp32"} weights).',
    )
    card_path = write_card(card, directory)
    return {
        'weights': str(path),
        'card': str(card_path),
        'dtype': 'float16' if keep_half else 'float32',
        'top1_fp32': reference['top1'],
        'top1_saved': metrics['top1'],
        'top5_saved': metrics['top5'],
    }


def _epochs_within_budget(args: argparse.Namespace, elapsed: float, first: dict[str, Any], planned: int) -> int:
    """Epoch count (at most ``planned``) that ends within ``--time-budget-s``, judged after the first epoch.

    The first epoch (set-up, warm-up, cudnn's algorithm search included) is the slowest, so the estimate is on the
    safe side; the final evaluation and export are reserved as three evaluations. With a warm-up of at least one
    epoch (default 1) the first epoch's learning rates do not depend on the run's length, so re-planning after it
    equals having planned the length from the start. In a multi-process job every process takes rank 0's count.
    """
    eval_s = float(first.get('eval_s', 0.0))
    per_epoch = float(first['train_s']) + eval_s / max(args.eval_every, 1)
    left = args.time_budget_s - elapsed - 3 * eval_s - 5.0
    fit = 1 + max(0, int(left // max(per_epoch, 1e-6)))
    if dist.is_initialized():
        t = torch.tensor(
            [fit],
            dtype=torch.int64,
            device='cuda' if torch.cuda.is_available() and dist.get_backend() == 'nccl' else 'cpu',
        )
        dist.broadcast(t, 0)
        fit = int(t.item())
    return max(1, min(planned, fit))


def train(args: argparse.Namespace, command: str = '') -> dict[str, Any]:
    """Run the training that ``args`` (``bh-models train`` options) describe; returns what ``final.json`` holds."""
    run_start = time.perf_counter()
    ctx = setup_distributed(args.device)
    if args.batch_size % ctx.world:
        raise SystemExit(f'--batch-size {args.batch_size} is the global batch: make it divisible by {ctx.world}')
    seed_everything(args.seed + ctx.rank)
    out = Path(args.output)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    info = DATASETS[args.data]
    img_size = args.img_size or max(MIN_INPUT, info.native_size or 224)
    cfg = data_config(args.data, img_size)
    train_set = build_dataset(
        args.data, args.data_dir, 'train', train_transform(cfg, args.pad, args.hflip, args.reprob)
    )
    info = dataset_info(args.data, train_set)
    model = timm.create_model(
        args.model, num_classes=info.num_classes, in_chans=info.channels, drop_path_rate=args.drop_path
    )
    model.pretrained_cfg = {**model.pretrained_cfg, **cfg, 'num_classes': info.num_classes}
    if args.initial_checkpoint:  # start from earlier weights (e.g. a run continued on other hardware)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in load_file(args.initial_checkpoint).items()},
            strict=True,
        )
    eval_tf = create_transform(**resolve_data_config({}, model=model), is_training=False)  # as a user would
    val_set = build_dataset(args.data, args.data_dir, 'test', eval_tf)

    cuda = ctx.device.type == 'cuda'
    channels_last = args.channels_last
    model.to(ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    per_rank = args.batch_size // ctx.world
    train_loader = _loader(train_set, per_rank, True, ctx, args.workers, args.seed)
    val_loader = _val_loader(val_set, max(per_rank, 256), ctx, args.workers)
    steps = len(train_loader) if args.max_steps is None else min(args.max_steps, len(train_loader))

    optimizer = create_optimizer_v2(model, args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum)

    def make_scheduler(num_epochs: int) -> tuple[Any, int]:
        return create_scheduler_v2(
            optimizer,
            sched=args.sched,
            num_epochs=num_epochs,
            warmup_epochs=args.warmup_epochs,
            warmup_lr=args.lr * 0.01,
            min_lr=args.lr * 1e-3,
            step_on_epochs=False,
            updates_per_epoch=steps,
        )

    scheduler, epochs = make_scheduler(args.epochs)
    mixup = (
        Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            label_smoothing=args.smoothing,
            num_classes=info.num_classes,
        )
        if (args.mixup > 0 or args.cutmix > 0)
        else None
    )
    if mixup is not None:
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(args.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    net: nn.Module = (
        DistributedDataParallel(model, device_ids=[ctx.local_rank] if cuda else None) if (ctx.world > 1) else model
    )

    start_epoch, history = 0, []
    if args.resume:
        state = load_checkpoint(out, model)
        if state is not None:
            optimizer.load_state_dict(state['optimizer'])
            torch.set_rng_state(state['rng'][ctx.rank] if ctx.rank < len(state['rng']) else state['rng'][0])
            start_epoch, history = int(state['epoch']) + 1, json.loads(state['history'])
            saved_epochs = int(state['epochs'])
            if bool(state.get('budgeted', False)) and saved_epochs != epochs:  # the budget fixed it after epoch 1
                scheduler, epochs = make_scheduler(saved_epochs)
            if saved_epochs == epochs:  # same length: continue the schedule exactly; else the new --epochs' cosine
                scheduler.load_state_dict(state['scheduler'])
            if ctx.main:
                print(f'resumed from {out / CHECKPOINT} after epoch {start_epoch}', flush=True)
    if ctx.main:
        print(
            f'{args.model} on {info.title} {img_size}x{img_size}: {len(train_set)} train / {len(val_set)} test '
            f'images, {ctx.world} process(es) x batch {per_rank} on {ctx.device}, {epochs} epochs',
            flush=True,
        )

    timing: dict[str, float] = {}
    epoch = start_epoch - 1
    while epoch + 1 < epochs:  # not a range: --time-budget-s may shorten the run after its first epoch
        epoch += 1
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        net.train()
        sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss*n, correct, n
        bar = _progress(steps, f'epoch {epoch + 1}/{epochs}', ctx.main and not args.quiet)
        tick, warm_start, warm_images = time.perf_counter(), None, 0
        for step, (images, targets) in enumerate(train_loader):
            if step >= steps:
                break
            if step == min(10, steps - 1):  # throughput over the steps after the first 10 (warm-up, cudnn search)
                if cuda:
                    torch.cuda.synchronize()
                warm_start, warm_images = time.perf_counter(), 0
            images = images.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            hard = targets
            if mixup is not None:
                images, targets = mixup(images, targets)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(ctx.device, args.amp):
                logits = net(images)
                loss = criterion(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(epoch * steps + step + 1)
            n = len(hard)
            warm_images += n * ctx.world
            sums[0] += loss.detach().double() * n  # accumulated on the device: no host sync per step
            sums[1] += (logits.argmax(1) == hard).sum()
            sums[2] += n
            if ctx.main and (step % 25 == 0 or step == steps - 1) and not args.quiet:
                loss_sum, correct, seen = sums.tolist()
                elapsed = time.perf_counter() - tick
                bar.set_postfix(
                    loss=f'{loss_sum / seen:.3f}',
                    acc=f'{100 * correct / seen:.1f}',
                    img_s=f'{seen * ctx.world / elapsed:.0f}',
                    lr=f'{optimizer.param_groups[0]["lr"]:.4f}',
                )
            bar.update(1)
        bar.close()
        if cuda:
            torch.cuda.synchronize()
        train_s = time.perf_counter() - tick
        if warm_start is not None and warm_images:
            timing['train_img_per_s'] = warm_images / max(time.perf_counter() - warm_start, 1e-9)
        if dist.is_initialized():
            dist.all_reduce(sums)
        loss_sum, correct, seen = sums.tolist()
        row: dict[str, Any] = {
            'epoch': epoch + 1,
            'train_loss': loss_sum / max(seen, 1),
            'train_acc': 100 * correct / max(seen, 1),
            'train_s': round(train_s, 1),
            'lr': optimizer.param_groups[0]['lr'],
        }
        if (args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == epochs)) or (
            args.time_budget_s and epoch == 0  # the budget needs the evaluation time
        ):
            tick = time.perf_counter()
            row.update(
                {
                    f'val_{k}': v
                    for k, v in evaluate_model(net, val_loader, ctx.device, args.amp, channels_last).items()
                    if k != 'images'
                }
            )
            row['eval_s'] = round(time.perf_counter() - tick, 1)
        history.append(row)
        if args.time_budget_s and epoch == 0 and start_epoch == 0:
            epochs = _epochs_within_budget(args, time.perf_counter() - run_start, row, epochs)
            scheduler, epochs = make_scheduler(epochs)  # same warm-up, the cosine now ends at the new length
            if ctx.main:
                print(f'--time-budget-s {args.time_budget_s:g}: {epochs} epochs fit', flush=True)
        if ctx.main:
            print(json.dumps(row), flush=True)
            rng = [torch.get_rng_state()] * ctx.world
            save_checkpoint(
                out,
                model,
                {
                    'epoch': epoch,
                    'optimizer': optimizer.state_dict(),
                    'scheduler': scheduler.state_dict(),
                    'rng': rng,
                    'epochs': epochs,
                    'budgeted': bool(args.time_budget_s),
                    'history': json.dumps(history),
                },
            )
            (out / 'history.json').write_text(json.dumps(history, indent=1) + '\n')
        if dist.is_initialized():
            dist.barrier()

    final = evaluate_model(net, val_loader, ctx.device, amp=False, channels_last=channels_last)  # fp32, as exported
    result: dict[str, Any] = {
        'model': args.model,
        'data': args.data,
        'seed': args.seed,
        'epochs': epochs,
        'img_size': img_size,
        'world_size': ctx.world,
        'device': str(ctx.device),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'command': command,
        'top1': final['top1'],
        'top5': final['top5'],
        'val_images': final['images'],
        'history': history,
        **timing,
    }
    if ctx.world > 1:  # DDP keeps replicas equal; say so from the weights themselves
        flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
        sums_all = [torch.zeros(2, dtype=torch.float64, device=ctx.device) for _ in range(ctx.world)]
        dist.all_gather(sums_all, torch.stack([flat.sum(), flat.abs().sum()]))
        result['replicas_equal'] = all(torch.equal(s, sums_all[0]) for s in sums_all)
    if args.export:  # every process: the fp16 check is a collective evaluation
        export = _export(model, args, cfg, val_loader, ctx, final, label_names(train_set), command)
        if ctx.main:
            result['export'] = export
    if ctx.main:
        (out / 'final.json').write_text(json.dumps(result, indent=1) + '\n')
        print(
            f'final: top-1 {final["top1"]:.2f} %, top-5 {final["top5"]:.2f} % on {final["images"]} '
            f'{args.data} test images' + (f'; wrote {result["export"]["weights"]}' if args.export else ''),
            flush=True,
        )
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='bh-models train',
        description='Pre-train a BH (or any timm) model on an image classification data set read from disk. '
        'Under `torchrun --nproc_per_node N` it runs DistributedDataParallel.',
    )
    p.add_argument('--model', required=True, help='timm model name, e.g. bh_resnet50 or resnet50')
    p.add_argument('--data', required=True, choices=sorted(DATASETS), help='data set format')
    p.add_argument('--data-dir', required=True, help='folder with the data set files (see bh_models.datasets)')
    p.add_argument('--output', required=True, help='folder for checkpoints, history.json and final.json')
    p.add_argument('--epochs', type=int, default=30)
    p.add_argument('--batch-size', type=int, default=128, help='global batch (split over the processes)')
    p.add_argument('--img-size', type=int, default=0, help='input size (default: native, at least 32)')
    p.add_argument('--opt', default='sgd', help="timm optimizer name ('sgd' is SGD with Nesterov momentum)")
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--weight-decay', type=float, default=5e-4)
    p.add_argument('--sched', default='cosine', help='timm scheduler name, stepped per update')
    p.add_argument('--warmup-epochs', type=int, default=1)
    p.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    p.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (0: off)')
    p.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (0: off)')
    p.add_argument('--reprob', type=float, default=0.25, help='random erasing probability')
    p.add_argument('--pad', type=float, default=0.125, help='random-crop padding, fraction of the input size')
    p.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    p.add_argument('--drop-path', type=float, default=0.0, help='stochastic depth rate')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1), help='DataLoader workers')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=True, help='bf16 autocast on CUDA')
    p.add_argument(
        '--channels-last',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='channels_last tensors (measured 1.66x faster on 2 CPU cores for bh_resnet50 at 32x32)',
    )
    p.add_argument('--eval-every', type=int, default=1, help='evaluate every N epochs (0: only at the end)')
    p.add_argument(
        '--time-budget-s',
        type=float,
        default=0,
        help='fit the run into this many seconds: after the first epoch the epoch count becomes the '
        'largest that fits (at most --epochs), and the cosine schedule is set to end there',
    )
    p.add_argument('--initial-checkpoint', default='', help='safetensors weights to start from (all keys must match)')
    p.add_argument('--recipe-note', default='', help="text put before the command line in an exported card's recipe")
    p.add_argument('--max-steps', type=int, default=None, help='cap the steps per epoch (smoke runs, timing)')
    p.add_argument('--resume', action='store_true', help='continue from the checkpoint in --output')
    p.add_argument(
        '--export', default='', metavar='MODEL.TAG', help='write the final weights and card, e.g. bh_resnet50.fmnist'
    )
    p.add_argument('--export-dir', default='', help='where --export writes (default: the weights directory)')
    p.add_argument('--license', default='apache-2.0', help='license of the exported weights (a Hub license id)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def _without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + '='):
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``bh-models train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.export:
        model_tag = args.export.split('.')
        if len(model_tag) != 2 or model_tag[0] != args.model:
            raise SystemExit(f'--export {args.export!r}: use {args.model}.<tag>, e.g. {args.model}.{args.data}')
    import bh_models  # noqa: F401  (registers the BH models in timm)

    recorded = shlex.join(_without_option(argv, '--recipe-note'))  # the note is put before the command, not in it
    command = 'bh-models train ' + recorded
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        command = f'torchrun --nproc_per_node {os.environ["WORLD_SIZE"]} -m bh_models.cli train ' + recorded
    train(args, command)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
