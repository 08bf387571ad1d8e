"""The data set readers, on small files written in each published format (and the real Fashion-MNIST if installed)."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from data_files import write_cifar100, write_fmnist, write_image_folder, write_imagenet32
from PIL import Image

from bh_models.datasets import DATASETS, DatasetNotFoundError, build_dataset, dataset_info, load_array_pickle

DEBIAN_FMNIST = Path('/usr/share/datasets/fashion-mnist')


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))  # where gzipped IDX files are unpacked


@pytest.mark.parametrize('layout', ['gz', 'plain', 'torchvision'])
def test_fmnist_reads_idx_files(tmp_path, layout):
    root = tmp_path / 'fm'
    folder = root / 'FashionMNIST' / 'raw' if layout == 'torchvision' else root
    write_fmnist(folder, n_train=30, n_test=20, gz=layout == 'gz')
    train, test = build_dataset('fmnist', root, 'train'), build_dataset('fmnist', root, 'test')
    assert (len(train), len(test)) == (30, 20)
    image, label = train[13]
    assert isinstance(image, Image.Image) and image.mode == 'L' and image.size == (28, 28)
    assert label == 3 and 75 <= np.asarray(image).mean() <= 80  # the writer encodes the label in the grey level
    assert train.classes[0] == 'T-shirt/top' and len(train.classes) == DATASETS['fmnist'].num_classes


def test_fmnist_missing_files_name_the_debian_package(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetNotFoundError, match='apt-get install dataset-fashion-mnist'):
        build_dataset('fmnist', tmp_path / 'empty', 'train')


def test_cifar100_reads_the_python_pickles(tmp_path):
    root = write_cifar100(tmp_path / 'c100', n_train=40, n_test=20)
    for data_dir in (root, root / 'cifar-100-python'):  # the parent or the folder itself
        train = build_dataset('cifar100', data_dir, 'train')
        image, label = train[7]
        assert len(train) == 40 and image.mode == 'RGB' and image.size == (32, 32) and label == 7
    assert len(build_dataset('cifar100', root, 'test')) == 20
    assert train.classes[99] == 'class99'
    (root / 'cifar-100-python' / 'meta').unlink()
    with pytest.raises(DatasetNotFoundError, match='lacks meta'):
        build_dataset('cifar100', root, 'train')


def test_imagenet32_reads_numpy_pickles_with_one_based_labels(tmp_path):
    folder = write_imagenet32(tmp_path / 'in32', n_per_batch=8, batches=2, n_val=6)
    train, val = build_dataset('imagenet32', folder, 'train'), build_dataset('imagenet32', folder, 'test')
    assert (len(train), len(val)) == (16, 6)
    raw = load_array_pickle(folder / 'train_data_batch_2')
    image, label = train[8 + 3]  # batch 2, row 3
    assert label == raw['labels'][3] - 1
    planar = raw['data'][3].reshape(3, 32, 32).transpose(1, 2, 0)  # channel-planar RGB
    assert np.array_equal(np.asarray(image), planar)


def test_imagenet32_reader_refuses_pickles_that_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    folder = tmp_path / 'bad'
    folder.mkdir()
    (folder / 'val_data').write_bytes(pickle.dumps({'data': Exploit(), 'labels': [1]}))
    with pytest.raises(pickle.UnpicklingError, match='refusing to unpickle'):
        build_dataset('imagenet32', folder, 'test')
    with pytest.raises(DatasetNotFoundError, match='train_data_batch_1'):
        build_dataset('imagenet32', folder, 'train')


def test_image_folder(tmp_path):
    root = write_image_folder(tmp_path / 'folder', classes=3, per_class=4)
    train = build_dataset('folder', root, 'train')
    assert len(train) == 12 and train.classes == ['class_0', 'class_1', 'class_2']
    assert dataset_info('folder', train).num_classes == 3
    assert len(build_dataset('folder', root, 'test')) == 12  # 'test' is the held-out split: val/


def test_unknown_names_and_missing_dirs(tmp_path):
    with pytest.raises(ValueError, match='unknown data set'):
        build_dataset('mnist', tmp_path, 'train')
    with pytest.raises(ValueError, match='unknown split'):
        build_dataset('fmnist', tmp_path, 'val')
    with pytest.raises(DatasetNotFoundError, match='does not exist'):
        build_dataset('fmnist', tmp_path / 'nowhere', 'train')


@pytest.mark.skipif(not DEBIAN_FMNIST.is_dir(), reason='apt-get install dataset-fashion-mnist')
def test_real_fashion_mnist_from_the_debian_package():
    train, test = build_dataset('fmnist', DEBIAN_FMNIST, 'train'), build_dataset('fmnist', DEBIAN_FMNIST, 'test')
    assert (len(train), len(test)) == (60000, 10000)
    pixels = train.data.float() / 255
    assert abs(pixels.mean().item() - DATASETS['fmnist'].mean[0]) < 1e-3
    assert abs(pixels.std().item() - DATASETS['fmnist'].std[0]) < 1e-3
    with gzip.open(DEBIAN_FMNIST / 't10k-labels-idx1-ubyte.gz') as f:
        labels = np.frombuffer(f.read()[8:], dtype=np.uint8)
    assert labels.tolist() == test.targets.tolist()
