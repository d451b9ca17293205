"""A dataset that is not prepared: advice at once when offline, and ``train --source`` that
prepares and runs in one command (on a slice of the real CIFAR-10 JPEG archive)."""

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import CIFAR10_JPEG, ROOT


@pytest.mark.parametrize("dataset", ["cifar10", "svhn_cropped", "fashion_mnist", "imagenet50"])
def test_offline_advice_comes_before_any_tfds_download(dataset, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from dgm_keras import data

    monkeypatch.setattr(data, "download_host_reachable", lambda name, timeout=3.0: False)

    def no_download(*args, **kwargs):
        raise AssertionError("TFDS was asked to download while offline")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(data.DataError) as err:
        data.ensure_prepared(dataset, str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and data.get_spec(dataset).download_host in message
    if dataset == "imagenet50":
        assert "manual_dir" in message
    else:
        assert f"python -m dgm_keras.prepare_data --dataset={dataset} --source=PATH" in message
        assert "--source=PATH to train" in message


def test_download_host_check_answers_within_its_timeout():
    from dgm_keras import data

    # An address that never answers (TEST-NET-1, RFC 5737): False, not a hang or an exception.
    data.DATASETS["_blackhole"] = data.DatasetSpec("_blackhole", "x", 1, "test", (0,), "none", "192.0.2.1")
    try:
        assert data.download_host_reachable("_blackhole", timeout=0.5) is False
    finally:
        del data.DATASETS["_blackhole"]


def _cifar_slice(path, per_class_train=12, per_class_test=4):
    """The first images of each class of the real archive, in its own layout."""
    counts = {}
    with tarfile.open(CIFAR10_JPEG) as src, tarfile.open(path, "w:gz") as out:
        for member in src:
            if not member.isfile():
                continue
            split, cls = member.name.lstrip("./").split("/")[:2]
            limit = per_class_train if split == "train" else per_class_test
            if counts.get((split, cls), 0) < limit:
                counts[(split, cls)] = counts.get((split, cls), 0) + 1
                out.addfile(member, io.BytesIO(src.extractfile(member).read()))
            if len(counts) == 20 and all(counts[k] == (per_class_train if k[0] == "train" else per_class_test)
                                         for k in counts):
                break


def test_train_prepares_from_source_and_runs_cifar10(tmp_path):
    if not os.path.exists(CIFAR10_JPEG):
        pytest.skip("../shared/data/cifar10_jpeg.tar.gz is not on this machine")
    archive = tmp_path / "cifar_slice.tar.gz"
    _cifar_slice(archive)
    data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
    args = ["--dataset=cifar10", f"--source={archive}", f"--data_dir={data_dir}", f"--workdir={workdir}",
            f"--export_dir={tmp_path / 'exp'}", "--classes_per_task=5", "--steps_per_task=2", "--batch_size=8",
            "--replay_batch_size=8", "--replay_per_class=8", "--checkpoint_every=0", "--validation_fraction=0.25"]
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["complete"] and results["settings"]["file"].endswith("cifar10_dgmw.cfg")
    assert results["counts"]["test"] == 40 and len(results["A_t"]) == 2
    assert (data_dir / "cifar10").is_dir()
    assert "has no dataset_info.json" not in proc.stderr  # TFDS's warning on a fresh data dir is not shown
    # A bad source is one line naming it, and nothing is built.
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.train", *args[:1], f"--source={tmp_path / 'nope.tar'}",
                           f"--data_dir={tmp_path / 'empty'}", f"--workdir={tmp_path / 'run2'}",
                           f"--export_dir={tmp_path / 'exp2'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train: ") and "nope.tar" in last and "does not exist" in last
    assert not (tmp_path / "empty" / "cifar10").exists()
