"""The entry point's flags: every bad value is one clear line, a non-zero exit, nothing written."""

import os
import subprocess
import sys

import pytest

from dgm_keras import settings, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _values(tmp_path, **over):
    values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
    values.update(data_dir=str(tmp_path / "data"), workdir=str(tmp_path / "work"), export_dir=str(tmp_path / "exp"))
    values.update(over)
    return train.resolve(values, given=set(over) | {"data_dir", "workdir", "export_dir"})[0]


@pytest.mark.parametrize("over,pattern", [
    (dict(dataset="mnist3"), r"--dataset='mnist3' is not allowed; allowed: mnist, fashion_mnist"),
    (dict(method="hat"), r"--method='hat' is not allowed; allowed: dgmw, dgma, joint, finetune"),
    (dict(classes_per_task=0), r"--classes_per_task=0 is not allowed; allowed: a positive integer"),
    (dict(classes_per_task=3), r"--classes_per_task=3 .*allowed: a divisor of the 10 classes of mnist: 1, 2, 5, 10"),
    (dict(dataset="imagenet50", classes_per_task=3), r"divisor of the 50 classes of imagenet50: 1, 2, 5, 10, 25, 50"),
    (dict(epochs_per_task=-1), r"--epochs_per_task=-1"),
    (dict(batch_size=0), r"--batch_size=0"),
    (dict(steps_per_task=-5), r"--steps_per_task=-5 .*0 or a positive integer"),
    (dict(validation_fraction=1.5), r"--validation_fraction=1.5"),
    (dict(validation_fraction=0.155), r"whole percent"),
    (dict(g_lr=0.0), r"--g_lr=0.0 .*positive number"),
    (dict(beta_1=1.0), r"--beta_1=1.0"),
    (dict(jit_compile="yes"), r"--jit_compile='yes' .*auto, true, false"),
    (dict(class_order="random"), r"--class_order='random' .*natural, permuted"),
    (dict(mergan_mode="xx"), r"--mergan_mode='xx' is not allowed; allowed: jtr, ra"),
    (dict(icarl_memory=0), r"--icarl_memory=0 .*positive integer"),
    (dict(memory_per_class=-1), r"--memory_per_class=-1 .*0 or a positive"),
    (dict(ewc_lambda=-1.0), r"--ewc_lambda=-1.0 .*>= 0"),
    (dict(rwalk_alpha=1.5), r"--rwalk_alpha=1.5 .*\[0, 1\]"),
    (dict(mask_gradient="hat"), r"--mask_gradient='hat' is not allowed; allowed: annealed, constant"),
    (dict(classifier="own"), r"--classifier='own' is not allowed; allowed: shared, separate"),
    (dict(classifier_steps="many"), r"--classifier_steps='many' is not allowed; allowed: combined, reference"),
    (dict(classifier_data="fake"), r"--classifier_data='fake' is not allowed; allowed: real, generated"),
    (dict(classifier_data="generated", classifier="shared", classifier_steps="combined"),
     r"--classifier_data='generated' is not allowed; allowed: real with --classifier=shared --classifier_steps=combined"),
    (dict(generator_bn="none"), r"--generator_bn='none' is not allowed; allowed: moving, reestimate"),
    (dict(replay="both"), r"--replay='both' is not allowed; allowed: fixed, fresh"),
    (dict(c_lr=0.0), r"--c_lr=0.0 .*positive number"),
    (dict(classifier_head_lr=-1e-3), r"--classifier_head_lr=-0.001 .*>= 0"),
    # The reference schedule's classifier steps take --c_lr.
    (dict(classifier_head_lr=1e-3, classifier_steps="reference"),
     r"--classifier_head_lr=0.001 is not allowed; allowed: 0 unless --classifier=shared --classifier_steps=combined"),
    (dict(classifier_head_lr=1e-3, classifier="separate", classifier_steps="combined"), r"--classifier_head_lr=0.001"),
    (dict(ema_warmup=1.0), r"--ema_warmup=1.0 .*> 1"),
])
def test_bad_values_are_named(tmp_path, over, pattern):
    with pytest.raises(train.FlagError, match=pattern):
        train.check_flags(_values(tmp_path, **over))


def test_strategy_is_refused_for_a_method_that_is_not_distributed(tmp_path, monkeypatch):
    # Every method is distributed today; the rule stays for one that is added without it.
    monkeypatch.setattr(train.config, "DISTRIBUTED_METHODS", ("dgmw", "dgma", "joint", "finetune"))
    with pytest.raises(train.FlagError, match=r"--strategy='mirrored' is not allowed; allowed: default for "
                                              r"--method=icarl \(distributed training is implemented for dgmw, dgma"):
        train.check_flags(_values(tmp_path, strategy="mirrored", method="icarl"))


def test_paths_that_are_files_or_unwritable(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("keep me")
    with pytest.raises(train.FlagError, match="--workdir=.* a folder \\(this path is a file\\)"):
        train.check_flags(_values(tmp_path, workdir=str(afile)))
    with pytest.raises(train.FlagError, match="--data_dir=.*readable and writable folder"):
        train.check_flags(_values(tmp_path, data_dir=str(afile)))
    with pytest.raises(train.FlagError, match="--export_dir=.*under a writable folder"):
        train.check_flags(_values(tmp_path, export_dir=str(afile / "sub")))
    assert afile.read_text() == "keep me"


def test_good_defaults_pass(tmp_path):
    values = _values(tmp_path)
    train.check_flags(values)
    assert values["ngf"] == 6 and values["sparsity_weight"] == 1.0 and values["mask_gradient"] == "constant"
    assert values["gp_weight"] == 10.0  # the WGAN-GP paper's (session 14); the *_paper files keep the reference's 1
    for name in ("mnist_dgmw_paper", "mnist_dgma_paper", "cifar10_dgmw_paper", "svhn_cropped_dgmw_paper"):
        assert float(settings.read_flagfile(os.path.join(ROOT, "flags", f"{name}.cfg"))["gp_weight"][0]) == 1.0, name
    dgma = _values(tmp_path, method="dgma")
    assert dgma["ngf"] == 20 and dgma["s_max"] == 1e5
    # DGMa takes the main command's masks (learning all task, lambda 1); its paper file keeps the reference's.
    assert dgma["mask_gradient"] == "constant" and dgma["sparsity_weight"] == 1.0
    paper = settings.read_flagfile(os.path.join(ROOT, "flags", "mnist_dgma_paper.cfg"))  # nested files too
    assert paper["mask_gradient"][0] == "annealed" and float(paper["sparsity_weight"][0]) == 0.01


def test_ac_gan_term_is_on_by_default_only_when_a_task_has_several_classes(tmp_path):
    # The critic never sees labels: with two classes a task only the AC term ties G(z, y) to class y.
    assert _values(tmp_path)["ac_weight"] == 0.0  # one class a task: the reference code's setting
    assert _values(tmp_path, classes_per_task=2)["ac_weight"] == 1.0
    assert _values(tmp_path, method="dgma", classes_per_task=5)["ac_weight"] == 1.0
    assert _values(tmp_path, classes_per_task=2, ac_weight=0.0)["ac_weight"] == 0.0  # an explicit value wins
    assert _values(tmp_path, ac_weight=0.5)["ac_weight"] == 0.5


@pytest.mark.parametrize("classes_per_task", [1, 2])
def test_mergan_always_gets_the_label_signal(tmp_path, classes_per_task):
    # A per-method fact: MeRGAN's conditional generator has no other label signal, whatever the split
    # and whether or not its settings file says so.
    assert _values(tmp_path, method="mergan", classes_per_task=classes_per_task)["ac_weight"] == 1.0
    assert _values(tmp_path, method="mergan", settings="mergan_ra", classes_per_task=classes_per_task)["ac_weight"] == 1.0
    assert _values(tmp_path, method="mergan", ac_weight=0.25)["ac_weight"] == 0.25


def test_cli_bad_flag_exits_with_one_line_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "dgm_keras.train", "--method=sgd", f"--workdir={work}",
                           f"--export_dir={tmp_path / 'exp'}", f"--data_dir={tmp_path / 'data'}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["train: --method='sgd' is not allowed; allowed: dgmw, dgma, joint, finetune, ewc, si, rwalk, "
                     "icarl, dgr, mergan"]
    assert not work.exists() and not (tmp_path / "exp").exists() and not (tmp_path / "data").exists()
