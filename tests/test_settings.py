"""One mapping (dataset, method) -> settings, used by train, the harness and the tests; a user
flag always wins; results.json says where each value came from; a missing pair is an error."""

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from dgm_keras import config, settings, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIR_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "flags", "*.cfg"))
                    if not f.endswith(("_paper.cfg", "_long.cfg")))


def _resolve(tmp_path, **given):
    values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
    paths = dict(data_dir=str(tmp_path / "data"), workdir=str(tmp_path / "work"), export_dir=str(tmp_path / "exp"))
    values.update(paths, **given)
    return train.resolve(values, given=set(given) | set(paths))


@pytest.mark.parametrize("dataset,file,sparsity,gp_weight,epochs", [
    ("cifar10", "flags/cifar10_dgmw.cfg", 8.0, 10.0, 10), ("svhn_cropped", "flags/svhn_cropped_dgmw.cfg", 0.001, 1.0, 5)])
def test_a_dataset_runs_its_own_settings_not_mnists(tmp_path, dataset, file, sparsity, gp_weight, epochs):
    values, origin = _resolve(tmp_path, dataset=dataset)
    assert origin["file"] == file
    assert values["g_lr"] == values["d_lr"] == 5e-4 and values["sparsity_weight"] == sparsity
    assert origin["sources"]["sparsity_weight"] == file
    # Measured with HAT's annealed masks, so the file keeps them under the main command's constant ones.
    assert values["mask_gradient"] == "annealed" and origin["sources"]["mask_gradient"] == file
    # lambda_gp from the file: SVHN keeps the reference code's 1 it was measured with; CIFAR-10 took 10
    # on its own validation in session 15 (written in the file, so nested files can pin 1 again).
    assert values["gp_weight"] == gp_weight and origin["sources"]["gp_weight"] == file
    # CIFAR-10 took 10 epochs a task on its own validation in session 18; SVHN keeps the reference's 5.
    assert values["epochs_per_task"] == epochs and origin["sources"]["epochs_per_task"] == file
    assert origin["sources"]["g_lr"] == file and origin["sources"]["ngf"] == "default"
    assert origin["sources"]["dataset"] == "command line"
    mnist, mnist_origin = _resolve(tmp_path)
    assert mnist["g_lr"] == 2e-3 and mnist["sparsity_weight"] == 1.0 and mnist_origin["file"] == "flags/mnist_dgmw.cfg"
    assert mnist["gp_weight"] == 10.0 and mnist_origin["sources"]["gp_weight"] == "default"


def test_a_user_flag_always_wins_and_is_recorded_as_such(tmp_path):
    values, origin = _resolve(tmp_path, dataset="cifar10", g_lr=1e-3, epochs_per_task=2)
    assert values["g_lr"] == 1e-3 and values["epochs_per_task"] == 2 and values["d_lr"] == 5e-4
    assert origin["sources"]["g_lr"] == origin["sources"]["epochs_per_task"] == "command line"
    # Even where the user's value equals the default, the file does not override it.
    values, _ = _resolve(tmp_path, method="dgma", ngf=6)
    assert values["ngf"] == 6 and values["s_max"] == 1e5


def test_a_variant_is_chosen_with_settings_and_its_method_comes_from_the_file(tmp_path):
    values, origin = _resolve(tmp_path, settings="rwalk_m")
    assert values["method"] == "rwalk" and values["memory_per_class"] == 10
    assert origin["file"] == "flags/mnist_rwalk_m.cfg" and origin["sources"]["memory_per_class"] == "flags/mnist_rwalk_m.cfg"
    with pytest.raises(train.FlagError, match=r"--method='dgmw' is not allowed with --settings='rwalk_m'; allowed: --method=rwalk"):
        _resolve(tmp_path, method="dgmw", settings="rwalk_m")


@pytest.mark.parametrize("dataset,method", [("fashion_mnist", "icarl"), ("cifar10", "ewc"), ("imagenet50", "dgma")])
def test_a_pair_without_a_settings_file_is_an_error_naming_it(tmp_path, dataset, method):
    with pytest.raises(train.FlagError, match=rf"no settings for --dataset={dataset} with {method}: "
                       rf"flags/{dataset}_{method}.cfg does not exist"):
        _resolve(tmp_path, dataset=dataset, method=method)


@pytest.mark.parametrize("file", PAIR_FILES, ids=os.path.basename)
def test_every_settings_file_names_its_pair_and_holds_only_train_flags(file):
    dataset, key = next((d, os.path.basename(file)[len(d) + 1:-4]) for d in config.DATASETS
                        if os.path.basename(file).startswith(d + "_"))
    loaded = settings.load(dataset, key)  # refuses a file whose --dataset or --method disagrees with its name
    assert set(loaded) <= set(train.FLAG_NAMES), set(loaded) - set(train.FLAG_NAMES)
    for name, (raw, where) in loaded.items():  # every value parses with the flag's own parser
        assert raw is True or raw is False or train.FLAGS[name].parser.parse(raw) is not None, where


def test_a_settings_file_is_checked_line_by_line(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "SETTINGS_DIR", str(tmp_path))
    (tmp_path / "mnist_dgmw.cfg").write_text("--method=dgmw\n--dataset=mnist\n--gp_weight=ten\n")
    with pytest.raises(train.FlagError, match=r"mnist_dgmw.cfg:3: --gp_weight=ten is not allowed"):
        _resolve(tmp_path)
    (tmp_path / "mnist_dgmw.cfg").write_text("--method=dgmw\n--dataset=mnist\n--lr=1\n")
    with pytest.raises(train.FlagError, match=r"mnist_dgmw.cfg:3: --lr is not a flag of dgm_keras.train"):
        _resolve(tmp_path)
    (tmp_path / "mnist_dgmw.cfg").write_text("--method=dgma\n--dataset=mnist\n")
    with pytest.raises(train.FlagError, match=r"mnist_dgmw.cfg:1: --method=dgma in the settings of \(mnist, dgmw\)"):
        _resolve(tmp_path)


def test_defaults_live_in_one_place():
    # The flags' defaults are HyperParams' defaults, field by field; the main command's settings
    # file adds nothing to them; and code that builds HyperParams directly gets the same method.
    hp = config.HyperParams()
    for field in dataclasses.fields(config.HyperParams):
        if field.name in train.FLAG_NAMES and field.name != "jit_compile":
            assert train.FLAGS[field.name].default == getattr(hp, field.name), field.name
    assert set(settings.load("mnist", "dgmw")) == {"method", "dataset"}
    assert not hasattr(train, "METHOD_DEFAULTS")
    assert hp.sparsity_weight == 1.0 and hp.mask_gradient == "constant" and hp.epochs_per_task == 6


def test_methods_fill_their_own_ac_default_when_built_directly():
    from dgm_keras import data  # noqa: PLC0415
    from dgm_keras.methods import make_method  # noqa: PLC0415

    one = data.Scenario("mnist", tuple(range(10)), 1, tuple(map(str, range(10))))
    two = dataclasses.replace(one, classes_per_task=2)
    hp = config.HyperParams(ngf=2)
    assert make_method("mergan", one, 1, hp).hp.ac_weight == 1.0
    assert make_method("dgmw", one, 1, hp).hp.ac_weight == 0.0
    assert make_method("dgmw", two, 1, hp).hp.ac_weight == 1.0
    assert make_method("mergan", one, 1, dataclasses.replace(hp, ac_weight=0.5)).hp.ac_weight == 0.5


def test_a_flagfile_s_values_are_recorded_as_that_file_s_not_as_typed(tmp_path):
    # The paper's CIFAR-10 budget nests the dataset's settings file; a flag typed after it wins.
    typed = train.given_sources(["train", "--flagfile=flags/cifar10_dgmw_paper.cfg", "--seed=3", "--notf_log",
                                 "--epochs_per_task=7"])
    assert typed["sparsity_weight"] == typed["generator_ema"] == "flags/cifar10_dgmw_paper.cfg"
    assert typed["dataset"] == typed["g_lr"] == "flags/cifar10_dgmw.cfg"
    assert typed["seed"] == typed["epochs_per_task"] == typed["tf_log"] == "command line"
    values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
    paths = dict(data_dir=str(tmp_path / "data"), workdir=str(tmp_path / "work"), export_dir=str(tmp_path / "exp"))
    given = {n: s for n, s in typed.items() if n in values}
    values.update(paths, dataset="cifar10", method="dgmw", epochs_per_task=7, seed=3, sparsity_weight=0.001,
                  generator_ema=0.0, classifier_ema=0.0, gp_weight=1.0)
    resolved, origin = train.resolve(values, given={**given, **dict.fromkeys(paths, "command line")})
    assert origin["sources"]["sparsity_weight"] == "flags/cifar10_dgmw_paper.cfg" and resolved["sparsity_weight"] == 0.001
    assert origin["sources"]["epochs_per_task"] == "command line" and resolved["epochs_per_task"] == 7
    lines = train.describe_settings(resolved, origin).splitlines()
    # The paper file pins lambda_gp 1 (the reference code's) over the nested file's 10: a later line wins.
    assert typed["gp_weight"] == "flags/cifar10_dgmw_paper.cfg"
    assert lines[2] == ("  from flags/cifar10_dgmw_paper.cfg (--flagfile): gp_weight=1.0 sparsity_weight=0.001 "
                        "generator_ema=0.0 classifier_ema=0.0")
    assert lines[-1] == "  from the command line: epochs_per_task=7 seed=3"


def test_train_prints_and_records_where_each_value_came_from(tmp_path, mnist_small_dir):
    env = dict(os.environ, PYTHONPATH=ROOT)
    # What the first lines say for CIFAR-10 (train prints describe_settings before anything is read).
    text = train.describe_settings(*_resolve(tmp_path, dataset="cifar10", seed=2))
    assert text.splitlines()[0].endswith("settings flags/cifar10_dgmw.cfg")
    assert "from flags/cifar10_dgmw.cfg: " in text and "g_lr=0.0005" in text and "sparsity_weight=8.0" in text
    assert text.splitlines()[-1] == "  from the command line: dataset=cifar10 seed=2"
    # A short run records the file and the source of every value.
    work = tmp_path / "w"
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.train", "--method=joint", "--classes_per_task=5",
                           "--steps_per_task=2", f"--data_dir={mnist_small_dir}", f"--workdir={work}",
                           f"--export_dir={tmp_path / 'e'}", "--d_lr=1e-3"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "settings flags/mnist_joint.cfg" in proc.stdout.splitlines()[0]
    # The progress (--progress=auto, stdout not a terminal): one line a task, as its training
    # ends, with its steps, the losses and the run's ETA (issue 13).
    progress = [line for line in proc.stdout.splitlines() if line.startswith("task ") and "[" in line]
    assert len(progress) == 2, proc.stdout
    for task, line in enumerate(progress, 1):
        assert re.fullmatch(rf"task {task}/2 \[=+\] 2/2 \S+  cls_loss \S+  \| run {50 * task}%, ETA \S+", line), line
    assert progress[-1].endswith("ETA 0s")
    res = json.loads((work / "results.json").read_text())
    # Each task's line: the test figure, and the validation one that settings are chosen on.
    ends = [line for line in proc.stdout.splitlines() if line.startswith("task 2/2: ")]
    assert ends == [f"task 2/2: test A_10 = {100 * res['A_t'][1]:.2f} (selected {100 * res['A_t_selected'][1]:.2f}), "
                    f"validation {100 * res['A_t_validation'][1]:.2f} in {res['task_seconds'][1]:.1f} s"]
    assert res["settings"]["file"] == "flags/mnist_joint.cfg"
    sources = res["settings"]["sources"]
    assert sources["d_lr"] == sources["steps_per_task"] == "command line"
    assert sources["method"] == "command line" and sources["g_lr"] == "default"
    assert res["hyperparameters"]["d_lr"] == 1e-3 and res["hyperparameters"]["ac_weight"] == 0.0
