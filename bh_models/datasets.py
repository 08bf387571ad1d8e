"""Image classification data sets for pre-training, read from their published file formats (no downloads).

- ``fmnist``: ``train-images-idx3-ubyte[.gz]`` and the other three IDX files (the Debian package
  ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``), or torchvision's
  ``FashionMNIST/raw/``; read by torchvision's ``FashionMNIST``.
- ``cifar100``: ``cifar-100-python/{train,test,meta}`` (or that folder itself); torchvision's ``CIFAR100``.
- ``imagenet32``: ``train_data_batch_1`` .. ``_10`` and ``val_data`` (numpy pickles: ``data`` N x 3072 uint8,
  1-based ``labels``); ``ImageNet32`` here, through an unpickler that admits numpy arrays and plain values only.
- ``folder``: ``train/<class>/*`` and ``val/<class>/*``; torchvision's ``ImageFolder``.

Every reader yields ``(PIL image, int label)``, so timm's transforms apply unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

__all__ = ['DATASETS', 'DatasetInfo', 'DatasetNotFoundError', 'ImageNet32', 'build_dataset']

SPLITS = ('train', 'test')  # 'test' is the held-out split: test for fmnist/cifar100, val for imagenet32/folder


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are not where ``data_dir`` says; the message lists what was expected."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on the data set needs to know about it."""

    title: str  # as weight cards name it
    num_classes: int
    channels: int
    native_size: int  # images are native_size x native_size (0: varies, ImageFolder)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_split: str  # the held-out split, as a card describes it
    hub_id: str | None = None  # Hugging Face data set id


DATASETS: dict[str, DatasetInfo] = {
    # mean/std of the training images (0-1 scale); Fashion-MNIST's measured here on the 60,000 (a test checks them)
    'fmnist': DatasetInfo('Fashion-MNIST', 10, 1, 28, (0.2860,), (0.3530,), 'test (10,000 images)',
                          hub_id='zalando-datasets/fashion_mnist'),
    'cifar100': DatasetInfo('CIFAR-100', 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            'test (10,000 images)', hub_id='uoft-cs/cifar100'),
    'imagenet32': DatasetInfo('ImageNet32', 1000, 3, 32, (0.4811, 0.4575, 0.4079), (0.2605, 0.2533, 0.2683),
                              'val (50,000 images)'),
    'folder': DatasetInfo('ImageFolder', 0, 3, 0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 'val'),
}  # fmt: skip

Transform = Callable[[Image.Image], Any] | None

_FMNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


def _cache_root() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'bh_models' / 'datasets'


def _fmnist_raw_folder(data_dir: Path) -> Path:
    """A folder holding the 4 uncompressed IDX files: ``data_dir`` itself, torchvision's layout, or a cache copy."""
    names = [n for pair in _FMNIST_FILES.values() for n in pair]
    for folder in (data_dir, data_dir / 'FashionMNIST' / 'raw', data_dir / 'raw'):
        if all((folder / n).is_file() for n in names):
            return folder
    for folder in (data_dir, data_dir / 'FashionMNIST' / 'raw', data_dir / 'raw'):
        if all((folder / f'{n}.gz').is_file() for n in names):  # torchvision reads uncompressed files only
            cache = _cache_root() / 'fashion-mnist' / hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
            cache.mkdir(parents=True, exist_ok=True)
            for n in names:
                target = cache / n
                gz = folder / f'{n}.gz'
                if not target.is_file() or target.stat().st_mtime < gz.stat().st_mtime:
                    tmp = target.with_suffix(f'.{os.getpid()}.tmp')  # concurrent runs: each writes its own
                    with gzip.open(gz, 'rb') as src, open(tmp, 'wb') as dst:
                        shutil.copyfileobj(src, dst)
                    tmp.replace(target)
            return cache
    raise DatasetNotFoundError(
        f'Fashion-MNIST not found in {data_dir}: expected {", ".join(names)} (optionally .gz) there or in '
        f'{data_dir}/FashionMNIST/raw. Install them with `apt-get install dataset-fashion-mnist` and pass '
        '--data-dir /usr/share/datasets/fashion-mnist.'
    )


class FashionMNIST(tv_datasets.FashionMNIST):
    """torchvision's reader over IDX files in any folder (``raw_folder``), gzipped or not."""

    def __init__(self, data_dir: str | Path, train: bool = True, transform: Transform = None) -> None:
        self._raw = _fmnist_raw_folder(Path(data_dir))
        super().__init__(str(data_dir), train=train, transform=transform, download=False)

    @property
    def raw_folder(self) -> str:  # torchvision: <root>/FashionMNIST/raw
        return str(self._raw)


class CIFAR100(tv_datasets.CIFAR100):
    """torchvision's reader; files are checked for presence, not against the md5 of the official archive."""

    train_list = [['train', None]]
    test_list = [['test', None]]
    meta = {'filename': 'meta', 'key': 'fine_label_names', 'md5': None}

    def __init__(self, data_dir: str | Path, train: bool = True, transform: Transform = None) -> None:
        root = Path(data_dir)
        if root.name == self.base_folder:
            root = root.parent
        missing = [n for n in ('train', 'test', 'meta') if not (root / self.base_folder / n).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f'CIFAR-100 not found: {root / self.base_folder} lacks {", ".join(missing)}. Unpack '
                'cifar-100-python.tar.gz into --data-dir (the python version of the data set).'
            )
        super().__init__(str(root), train=train, transform=transform, download=False)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and plain values only: a data file cannot run code."""

    ALLOWED = {
        ('numpy', 'ndarray'),
        ('numpy', 'dtype'),
        ('numpy.core.multiarray', '_reconstruct'),
        ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'),
        ('numpy._core.multiarray', 'scalar'),
        ('builtins', 'list'),
        ('builtins', 'dict'),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f'refusing to unpickle {module}.{name}: not a numpy array or plain value')
        return super().find_class(module, name)


def load_array_pickle(path: str | Path) -> dict[str, Any]:
    """Read a numpy-pickle batch file (ImageNet32's format) without allowing arbitrary objects."""
    with open(path, 'rb') as f:
        data = _ArrayUnpickler(io.BufferedReader(f), encoding='latin1').load()
    if not isinstance(data, dict) or 'data' not in data or 'labels' not in data:
        raise ValueError(f'{path}: not an ImageNet32 batch file (a dict with "data" and "labels")')
    return data


class ImageNet32(Dataset):
    """Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017): ``train_data_batch_1..10`` and ``val_data``.

    Each file is a pickled dict with ``data`` (N x 3072 uint8, channel-planar RGB) and ``labels`` (1-based).
    """

    def __init__(self, data_dir: str | Path, train: bool = True, transform: Transform = None) -> None:
        root = Path(data_dir)
        if train:
            files = sorted(root.glob('train_data_batch_*'), key=lambda p: int(p.name.rsplit('_', 1)[1]))
        else:
            files = [root / 'val_data'] if (root / 'val_data').is_file() else []
        if not files:
            want = 'train_data_batch_1 .. train_data_batch_10' if train else 'val_data'
            raise DatasetNotFoundError(
                f'ImageNet32 not found in {root}: expected {want} (the "Imagenet32_train" / "Imagenet32_val" '
                'numpy-pickle files unpacked into --data-dir).'
            )
        images, labels = [], []
        for path in files:
            batch = load_array_pickle(path)
            data = np.asarray(batch['data'], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f'{path}: "data" has shape {data.shape}, expected N x 3072')
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch['labels'], dtype=np.int64) - 1)
        self.data = np.ascontiguousarray(np.concatenate(images))
        self.targets = np.concatenate(labels).tolist()
        if min(self.targets) < 0 or max(self.targets) >= 1000:
            raise ValueError(f'{root}: labels outside 1..1000 (ImageNet32 labels are 1-based)')
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.data[index])
        return (self.transform(img) if self.transform else img), self.targets[index]


def _image_folder(data_dir: str | Path, train: bool, transform: Transform) -> tv_datasets.ImageFolder:
    root = Path(data_dir)
    split = 'train' if train else next((s for s in ('val', 'test', 'validation') if (root / s).is_dir()), 'val')
    if not (root / split).is_dir():
        raise DatasetNotFoundError(f'no {root / split}: an ImageFolder data set needs train/<class>/ and val/<class>/')
    return tv_datasets.ImageFolder(str(root / split), transform=transform)


_READERS: dict[str, Callable[..., Dataset]] = {
    'fmnist': FashionMNIST,
    'cifar100': CIFAR100,
    'imagenet32': ImageNet32,
    'folder': _image_folder,
}


def build_dataset(name: str, data_dir: str | Path, split: str, transform: Transform = None) -> Dataset:
    """The ``split`` (``'train'`` or ``'test'``: the held-out split) of data set ``name`` read from ``data_dir``."""
    if name not in _READERS:
        raise ValueError(f'unknown data set {name!r}; choose one of {", ".join(_READERS)}')
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; choose one of {SPLITS} ("test" is the held-out split)')
    if not Path(data_dir).is_dir():
        raise DatasetNotFoundError(f'--data-dir {data_dir} does not exist')
    return _READERS[name](data_dir, train=split == 'train', transform=transform)


def dataset_info(name: str, dataset: Dataset | None = None) -> DatasetInfo:
    """``DATASETS[name]``; for ``folder`` the class count is read from ``dataset``."""
    info = DATASETS[name]
    if name == 'folder' and dataset is not None:
        from dataclasses import replace

        info = replace(info, num_classes=len(dataset.classes))
    return info


def label_names(dataset: Dataset) -> list[str] | None:
    """The class names of a torchvision-style data set (``classes``), else None."""
    classes = getattr(dataset, 'classes', None)
    return list(classes) if classes else None
