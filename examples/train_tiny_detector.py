"""Smoke run: train a torchvision Faster R-CNN with a BH backbone on synthetic tiny objects, then report COCO AP.

Images are generated on the fly: a textured background (smooth noise, stripes, grain) with 4-20 px "people" (an
upright ellipse body and a round head, in a colour that differs from the surroundings) pasted on it. The detector is
``bh_models.detection.tiny_faster_rcnn`` (the authors' tiny anchors at strides 4-64, no image resizing), trained from
scratch (no pretrained BH weights exist yet). It prints the training loss as it goes and, at the end, COCO-style AP
on a fixed set of held-out images via pycocotools. This is a smoke run, not a result.

    pip install -e ".[examples]"
    python examples/train_tiny_detector.py --model bh_resnet50 --iterations 200

Every number depends on ``--seed``; on 2 CPU cores 200 iterations at 320x256 take 10-15 minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

import bh_models  # noqa: F401  (registers the bh_* models in timm)
from bh_models.detection import tiny_faster_rcnn

MIN_SIDE, MAX_SIDE = 4, 20  # object height range in pixels


def textured_background(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A 3xHxW image in [0, 1]: low-frequency colour noise, a random stripe pattern and pixel grain."""
    coarse = torch.rand(1, 3, max(2, height // 32), max(2, width // 32), generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode='bicubic', align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    angle = torch.rand(1, generator=generator).item() * math.pi
    period = 6 + 20 * torch.rand(1, generator=generator).item()
    stripes = torch.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    image = 0.7 * image + 0.12 * stripes + 0.08 * torch.randn(3, height, width, generator=generator)
    return image.clamp(0, 1)


def paste_person(image: torch.Tensor, box: Sequence[float], colour: torch.Tensor) -> None:
    """Draw a person-like figure (ellipse body, round head) filling ``box`` (x1, y1, x2, y2), anti-aliased."""
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    left, top = max(0, int(x1) - 1), max(0, int(y1) - 1)
    right, bottom = min(image.shape[2], int(x2) + 2), min(image.shape[1], int(y2) + 2)
    yy, xx = torch.meshgrid(torch.arange(top, bottom) + 0.5, torch.arange(left, right) + 0.5, indexing='ij')
    cx = (x1 + x2) / 2
    head_r = max(w, h * 0.3) / 2.6
    head_cy = y1 + head_r
    body_cy, body_ry, body_rx = (head_cy + head_r + y2) / 2, (y2 - head_cy - head_r) / 2 + 0.5, w / 2
    body = ((xx - cx) / body_rx) ** 2 + ((yy - body_cy) / body_ry) ** 2
    head = ((xx - cx) ** 2 + (yy - head_cy) ** 2) / head_r**2
    alpha = (1.5 - torch.minimum(body, head)).clamp(0, 1)  # soft edge: 1 inside, ramps to 0 just outside
    patch = image[:, top:bottom, left:right]
    patch.mul_(1 - alpha).add_(alpha * colour[:, None, None])


def synthetic_sample(
    height: int, width: int, generator: torch.Generator, max_objects: int = 12
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One image with 1..``max_objects`` tiny non-overlapping people and its torchvision target (label 1)."""
    image = textured_background(height, width, generator)
    count = int(torch.randint(1, max_objects + 1, (1,), generator=generator))
    boxes: list[list[float]] = []
    for _ in range(count * 4):  # rejection sampling for non-overlapping boxes
        if len(boxes) == count:
            break
        h = MIN_SIDE + (MAX_SIDE - MIN_SIDE) * torch.rand(1, generator=generator).item()
        w = h * (0.4 + 0.4 * torch.rand(1, generator=generator).item())
        x1 = torch.rand(1, generator=generator).item() * (width - w - 2) + 1
        y1 = torch.rand(1, generator=generator).item() * (height - h - 2) + 1
        box = [x1, y1, x1 + w, y1 + h]
        if any(b[0] < box[2] + 2 and box[0] < b[2] + 2 and b[1] < box[3] + 2 and box[1] < b[3] + 2 for b in boxes):
            continue
        region = image[:, int(y1) : int(box[3]) + 1, int(x1) : int(box[2]) + 1].mean((1, 2))
        colour = torch.where(region > 0.5, region - 0.45, region + 0.45).clamp(0, 1)  # contrast with the ground
        paste_person(image, box, colour)
        boxes.append(box)
    target = dict(boxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.ones(len(boxes), dtype=torch.int64))
    return image, target


def coco_ap(model: torch.nn.Module, samples: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> list[float]:
    """COCO bbox stats (AP@[.5:.95], AP50, AP75, AP small, ...) of ``model`` on ``samples`` via pycocotools."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit('this example needs pycocotools: pip install -e ".[examples]"') from err

    images, annotations, results = [], [], []
    model.eval()
    with torch.no_grad():
        for image_id, (image, target) in enumerate(samples, start=1):
            images.append(dict(id=image_id, height=image.shape[1], width=image.shape[2]))
            for x1, y1, x2, y2 in target['boxes'].tolist():
                annotations.append(
                    dict(
                        id=len(annotations) + 1,
                        image_id=image_id,
                        category_id=1,
                        bbox=[x1, y1, x2 - x1, y2 - y1],
                        area=(x2 - x1) * (y2 - y1),
                        iscrowd=0,
                    )
                )
            detections = model([image])[0]
            for (x1, y1, x2, y2), score in zip(
                detections['boxes'].tolist(), detections['scores'].tolist(), strict=True
            ):
                results.append(dict(image_id=image_id, category_id=1, bbox=[x1, y1, x2 - x1, y2 - y1], score=score))
    ground_truth = COCO()
    ground_truth.dataset = dict(images=images, annotations=annotations, categories=[dict(id=1, name='person')])
    ground_truth.createIndex()
    if not results:
        return [0.0] * 12
    evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iouType='bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [float(s) for s in evaluator.stats]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of the smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
    parser.add_argument('--model', default='bh_resnet50', help='timm model name (bh_* or a baseline such as resnet50)')
    parser.add_argument('--iterations', type=int, default=200)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument(
        '--image-size', type=int, nargs=2, default=(320, 256), metavar=('W', 'H'), help='multiples of 32'
    )
    parser.add_argument('--lr', type=float, default=2e-4, help='AdamW learning rate (training from scratch)')
    parser.add_argument('--eval-images', type=int, default=24)
    parser.add_argument('--log-every', type=int, default=25)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Train, print the loss curve and the COCO AP; return both (for tests)."""
    args = parse_args(argv)
    width, height = args.image_size
    if width % 32 or height % 32:
        raise SystemExit(f'--image-size {width} {height}: use multiples of 32 (the BH-HRNets need them)')
    torch.manual_seed(args.seed)
    train_gen = torch.Generator().manual_seed(args.seed)
    eval_gen = torch.Generator().manual_seed(args.seed + 1_000_003)
    eval_set = [synthetic_sample(height, width, eval_gen) for _ in range(args.eval_images)]

    model = tiny_faster_rcnn(
        args.model,
        num_classes=2,
        min_size=height,
        max_size=width,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    warmup = max(1, args.iterations // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: min(1.0, (it + 1) / warmup) * (0.1 if it >= int(0.8 * args.iterations) else 1.0),
    )
    print(
        f'{args.model}: {sum(p.numel() for p in params) / 1e6:.2f} M trainable params, {width}x{height} images, '
        f'batch {args.batch_size}, {args.iterations} iterations, anchors at strides {model.backbone.strides}'
    )

    curve: list[tuple[int, float]] = []  # (iteration, mean total loss over the last --log-every iterations)
    parts: list[dict[str, float]] = []  # the same means per loss term
    window: dict[str, list[float]] = {}
    start = time.time()
    model.train()
    for it in range(1, args.iterations + 1):
        batch = [synthetic_sample(height, width, train_gen) for _ in range(args.batch_size)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise SystemExit(f'iteration {it}: loss is {loss.item()} ({ {k: v.item() for k, v in losses.items()} })')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        for key, value in [('total', loss), *losses.items()]:
            window.setdefault(key.removeprefix('loss_'), []).append(value.item())
        if it % args.log_every == 0 or it == args.iterations:
            means = {k: sum(v) / len(v) for k, v in window.items()}
            curve.append((it, means['total']))
            parts.append(means)
            terms = ' '.join(f'{k}={v:.3f}' for k, v in means.items() if k != 'total')
            print(
                f'iter {it:4d}  loss {means["total"]:.3f}  [{terms}]  (means of the last {len(window["total"])})  '
                f'{time.time() - start:.0f}s'
            )
            window = {}
    if len(curve) >= 2:
        trend = ', '.join(f'{k} {parts[0][k]:.3f} -> {parts[-1][k]:.3f}' for k in parts[0])
        print(f'loss {"down" if curve[-1][1] < curve[0][1] else "NOT down"}: {trend}')

    stats = coco_ap(model, eval_set)
    print(
        f'COCO bbox on {len(eval_set)} held-out images ({sum(len(t["boxes"]) for _, t in eval_set)} objects, all '
        f'"small"): AP {stats[0]:.3f}  AP50 {stats[1]:.3f}  AP75 {stats[2]:.3f}  AR@100 {stats[8]:.3f}'
    )
    return dict(curve=curve, stats=stats)


if __name__ == '__main__':
    main(sys.argv[1:])
