"""Small data sets written in the published file formats, for the reader and training tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def _idx(array: np.ndarray) -> bytes:
    """The IDX encoding (big-endian dims, unsigned bytes) that Fashion-MNIST ships in."""
    magic = 0x0800 + array.ndim  # 0x08: unsigned byte
    return struct.pack('>I', magic) + struct.pack(f'>{array.ndim}I', *array.shape) + array.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n_train: int = 64, n_test: int = 32, gz: bool = True, seed: int = 0) -> Path:
    """Fashion-MNIST IDX files (28x28 grey, 10 classes); the label is readable from the image (its mean level)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        labels = np.arange(n) % 10
        images = (labels[:, None, None] * 25 + rng.integers(0, 5, (n, 28, 28))).astype(np.uint8)
        for kind, array in (('images-idx3', images), ('labels-idx1', labels)):
            data = _idx(array)
            name = f'{prefix}-{kind}-ubyte'
            if gz:
                (folder / f'{name}.gz').write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """``cifar-100-python/{train,test,meta}``: pickled dicts as in the official python version."""
    rng = np.random.default_rng(seed)
    folder = root / 'cifar-100-python'
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (('train', n_train), ('test', n_test)):
        fine = (np.arange(n) % 100).tolist()
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        entry = {
            b'filenames': [f'{i}.png'.encode() for i in range(n)],
            b'fine_labels': fine,
            b'coarse_labels': [f // 5 for f in fine],
            b'data': data,
        }
        (folder / name).write_bytes(pickle.dumps({k.decode(): v for k, v in entry.items()}))
    meta = {'fine_label_names': [f'class{i}' for i in range(100)], 'coarse_label_names': [f'c{i}' for i in range(20)]}
    (folder / 'meta').write_bytes(pickle.dumps(meta))
    return root


def write_imagenet32(folder: Path, n_per_batch: int = 8, batches: int = 2, n_val: int = 6, seed: int = 0) -> Path:
    """``train_data_batch_<i>`` / ``val_data``: numpy pickles with ``data`` (N x 3072) and 1-based ``labels``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = [(f'train_data_batch_{i + 1}', n_per_batch) for i in range(batches)] + [('val_data', n_val)]
    for name, n in files:
        labels = (rng.integers(0, 1000, n) + 1).tolist()
        batch = {
            'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            'labels': labels,
            'mean': np.zeros(3072, dtype=np.float64),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """``train/<class>/*.png`` and ``val/<class>/*.png``."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in range(classes):
            d = root / split / f'class_{c}'
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f'{i}.png')
    return root
