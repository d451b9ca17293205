"""--strategy: one step split across two replicas equals one step on the whole batch, and short
mirrored runs of the real command complete and agree with the same command on one device.

Two logical CPU devices must be set before TensorFlow initialises its devices, which the other
tests in this pytest process already did; so each check runs in a fresh Python process: this
file run as a script (``python tests/test_distribution.py step <data_dir>``) or the CLI.

The steps use SGD: Adam's first update is about lr * sign(gradient), so it would hide a
gradient that is a constant factor off (the loss scaling this checks).
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 8
ENV = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(args, timeout=600):  # the step check took 8 min beside five trainings on the 2 cores, 1 min alone
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# -- the subprocess side: python tests/test_distribution.py step <data_dir>
def _one_step(strategy, make_trainer, batch):
    """Weights after one ``fit`` step of a freshly seeded trainer made in ``strategy``'s scope
    (the initial weights too: both strategies must start from the same ones), and its logs."""
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    with strategy.scope():
        keras.utils.set_random_seed(0)
        trainer, watched = make_trainer()
    before = [np.array(v.numpy()) for v in watched]
    history = trainer.fit(tf.data.Dataset.from_tensor_slices(batch).batch(GLOBAL_BATCH), epochs=1, verbose=0)
    return before, [np.array(v.numpy()) for v in watched], {k: float(v[-1]) for k, v in history.history.items()}


def _compare(make_trainer, batch, single, mirrored, one_device=None):
    """One step on one device (or ``one_device``, such a step already taken) against 2 replicas."""
    b1, a1, logs1 = one_device or _one_step(single, make_trainer, batch)
    b2, a2, logs2 = _one_step(mirrored, make_trainer, batch)
    return {"same_start": all(np.array_equal(x, y) for x, y in zip(b1, b2)),
            "moved": max(float(np.abs(x - y).max()) for x, y in zip(a1, b1)),
            "max_diff": max(float(np.abs(x - y).max()) for x, y in zip(a1, a2)),
            "allclose": all(np.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a1, a2)),
            "logs_single": logs1, "logs_mirrored": logs2}


def _arrays(values):
    return [np.array(v.numpy() if hasattr(v, "numpy") else v) for v in values]


def _replica_spread(variables):
    """The largest difference between two replicas' copies of any of ``variables`` (0 with one):
    statistics a step updates on each replica's own copy must stay equal."""
    spread = 0.0
    for v in variables:
        copies = getattr(getattr(v, "value", v), "values", None) or ()
        for copy in copies[1:]:
            spread = max(spread, float(np.abs(copy.numpy() - copies[0].numpy()).max()))
    return spread


def _relative(got, want):
    """max |got - want| / max |want| per array, the largest over the arrays (0 where both are 0)."""
    return max([float(np.abs(g.astype(np.float64) - w).max() / max(np.abs(w).max(), 1e-30))
                for g, w in zip(got, want)] or [0.0])


def _method_steps(strategy, build, steps, end):
    """A method at its second task, made in ``strategy``'s scope from the same seed, after
    ``steps`` steps of ``base.fit_steps`` on its own pipeline (as the runner trains it).
    ``build()`` -> (method, the task's training arrays, the variables to watch, arrays that
    its setup computed outside ``fit``); ``end(method)`` -> arrays of its work after the steps,
    in the scope (the task's end)."""
    import keras  # noqa: PLC0415

    from dgm_keras.methods import base  # noqa: PLC0415

    with strategy.scope():
        keras.utils.set_random_seed(0)
        method, train, watched, setup = build()
        setup, before = _arrays(setup), _arrays(watched)
        logs = base.fit_steps(method.trainer, lambda: method.pipeline(1, train), 1, steps, [])
        after = _arrays(watched)
        spread = _replica_spread(watched)
        ended = _arrays(end(method))
    return dict(setup=setup, before=before, after=after, end=ended, logs=logs, spread=spread)


def _compare_methods(build, steps, end, single, mirrored):
    one, two = (_method_steps(s, build, steps, end) for s in (single, mirrored))
    return {"start_rel": _relative(two["before"], one["before"]),
            "moved": max(float(np.abs(x - y).max()) for x, y in zip(one["after"], one["before"])),
            "setup_rel": _relative(two["setup"], one["setup"]),
            "step_rel": _relative([a - b for a, b in zip(two["after"], two["before"])],
                                  [a - b for a, b in zip(one["after"], one["before"])]),
            "end_rel": _relative(two["end"], one["end"]), "replica_spread": two["spread"],
            "logs_single": one["logs"], "logs_mirrored": two["logs"]}


def step_check(data_dir):
    from dgm_keras import distribution  # noqa: PLC0415

    distribution.use_cpu_replicas(2)
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from dgm_keras import config, data, networks  # noqa: PLC0415
    from dgm_keras.methods import dgm, supervised  # noqa: PLC0415

    scenario = data.make_scenario("mnist", 5, class_names=data.label_names("mnist", data_dir))
    full = data.load_scenario_data(scenario, data_dir, 0.15).train  # read once: baseline_checks takes it too
    train = full.of_classes(scenario.task_classes(0))
    batch = (train.images[:GLOBAL_BATCH], train.labels[:GLOBAL_BATCH])
    single, mirrored = tf.distribute.get_strategy(), distribution.make_strategy("mirrored")
    out = {"replicas": mirrored.num_replicas_in_sync}

    def classifier_trainer():
        disc = networks.Discriminator(5, name="discriminator").build_all(1)
        trainer = supervised.ClassifierTrainer(disc)
        trainer.compile(keras.optimizers.SGD(0.1))
        return trainer, disc.head_variables("classifier")

    out["classifier"] = _compare(classifier_trainer, batch, single, mirrored)

    class CriticOnly(dgm.DGMTrainer):
        def train_step(self, batch):
            values = self.critic_step(batch, dgm.mask_scale(self.task_step, self.total_steps, self.hp.s_max))
            values.pop("real_x")
            return self.record({k: values[k] for k in ("d_loss", "wasserstein", "cls_loss")})

    def critic_trainer(synced):
        def make():
            # gp_weight 0: gan.gradient_penalty draws its interpolation weights per replica.
            # The paper's combined step: the critic step also trains the classifier head.
            hp = config.HyperParams(ngf=4, batch_size=GLOBAL_BATCH, classifier_steps="combined", classifier_data="real")
            gen = networks.Generator((16, 8, 4), 10, 1, "weight", name="generator").build_all()
            for norm in gen.task_norms:
                norm.synchronized = synced
            disc = networks.Discriminator(5, name="discriminator").build_all(1)
            trainer = CriticOnly(gen, disc, scenario.task_classes(0), 0, 10, hp, 1.0)
            trainer.compile(keras.optimizers.SGD(0.01), keras.optimizers.SGD(0.01))
            return trainer, disc.trainable_variables
        return make

    # One device holds the whole batch, so synced or not its statistics are the whole batch's:
    # both 2-replica runs are compared with the same one-device step (taken once).
    whole_batch = _one_step(single, critic_trainer(True), batch)
    out["critic_synced_bn"] = _compare(critic_trainer(True), batch, single, mirrored, whole_batch)
    out["critic_replica_bn"] = _compare(critic_trainer(False), batch, single, mirrored, whole_batch)
    out.update(baseline_checks(scenario, full, single, mirrored))
    print("RESULT " + json.dumps(out))


def baseline_checks(scenario, full, single, mirrored, only=()):
    """The baselines at their second task (a past task behind them, so their regulariser,
    distillation or replay is on), on one device and on 2 replicas: each case's setup (what the
    method computes when a task begins), its variables and statistics after the steps, and its
    work at the task's end. SGD, as above; 8 images of each class (tasks of 40) of ``full``, the
    scenario's training split."""
    import keras  # noqa: PLC0415

    from dgm_keras import config, data  # noqa: PLC0415
    from dgm_keras.methods import make_method  # noqa: PLC0415

    def task_data(task):
        parts = [full.of_classes(range(c, c + 1)) for c in scenario.task_classes(task)]
        return data.SplitArrays(np.concatenate([p.images[:8] for p in parts]),
                                np.concatenate([p.labels[:8] for p in parts]))

    hp = config.HyperParams(ngf=4, batch_size=GLOBAL_BATCH, replay_batch_size=GLOBAL_BATCH, replay_per_class=2,
                            icarl_memory=10, ewc_lambda=1e3, rwalk_fisher_update_after=2, mergan_mode="ra", seed=0)

    def at_second_task(name, importance=False, **over):
        """The method after task 0 (not trained: its end-of-task work runs on the initial
        weights) and the start of task 1, with SGD optimizers."""
        def build():
            method = make_method(name, scenario, 1, dataclasses.replace(hp, **over))
            method.begin_task(0, task_data(0))
            method.end_task(0)
            if importance:  # untrained, SI's and RWalk's task 0 leaves none: a fixed one, so the penalty is on
                for omega in method.regularizer.slots["importance"]:
                    omega.assign(np.linspace(0.5, 1.5, int(np.prod(omega.shape)), dtype=np.float32).reshape(omega.shape))
            method.begin_task(1, task_data(1))
            trainer = method.trainer
            if hasattr(trainer, "g_optimizer"):
                trainer.compile(keras.optimizers.SGD(0.01), keras.optimizers.SGD(0.01))
            else:
                trainer.compile(keras.optimizers.SGD(0.1))
            if hasattr(method, "gen"):  # DGR's and MeRGAN's: synced, as one device's (README, Scaling out)
                method.gen.norm.synchronized = True
            return method, task_data(1), *WATCH[name](method)
        return build

    WATCH = {  # (variables the steps change, arrays the setup computed)
        "ewc": lambda m: ([*m.disc.variables, *_slot_list(m)], [*m.regularizer.slots["importance"]]),
        "si": lambda m: ([*m.disc.variables, *_slot_list(m)], m.memory.arrays().images),
        "rwalk": lambda m: ([*m.disc.variables, *_slot_list(m)], []),
        "icarl": lambda m: (m.disc.variables, [m.herding[c] for c in sorted(m.herding)]),
        "dgr": lambda m: ([*m.gen.variables, *m.critic.variables, *m.solver.variables],
                          [m.replay.images, m.replay.labels]),
        "mergan": lambda m: ([*m.gen.variables, *m.disc.variables], [m.replay.images]),
    }

    def end_regularizer(method):
        method.end_task(1)
        return method.regularizer.slots["importance"]

    def end_icarl(method):
        method.end_task(1)
        return [method.nme.class_means, *[method.herding[c] for c in sorted(method.herding)]]

    cases = {  # (the method at its second task, steps, its work at the task's end)
        # EWC: the Fisher of task 0 (outside fit) sets the importance; two steps, the second
        # one away from the anchor; the Fisher of task 1 at the end.
        "ewc": (at_second_task("ewc"), 2, end_regularizer),
        # SI-M: the path integral of the global batch's gradients, with a memory batch zipped in.
        "si_m": (at_second_task("si", importance=True, memory_per_class=2), 2, end_regularizer),
        # RWalk: an interval of 2 steps closes in the second (the tf.cond in the replicated step).
        "rwalk": (at_second_task("rwalk", importance=True), 2, end_regularizer),
        "icarl": (at_second_task("icarl"), 1, end_icarl),
        "dgr": (at_second_task("dgr"), 1, lambda m: []),
        "mergan_ra": (at_second_task("mergan"), 1, lambda m: []),
    }
    out = {name: _compare_methods(*cases[name], single, mirrored) for name in only or cases}
    if not only:
        out["fisher_uneven_rel"] = _uneven_fisher(task_data(0), single, mirrored)
    return out


def _uneven_fisher(arrays, single, mirrored):
    """EWC's Fisher of 3 images in batches of 2: its last batch leaves one replica no image."""
    import keras  # noqa: PLC0415

    from dgm_keras import data, networks  # noqa: PLC0415
    from dgm_keras.methods import regularization  # noqa: PLC0415

    fishers = []
    for strategy in (single, mirrored):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            disc = networks.Discriminator(5).build_all(1)
            fishers.append(regularization.empirical_fisher(
                disc, disc.head_variables("classifier"), data.SplitArrays(arrays.images[:3], arrays.labels[:3]), 2))
    return _relative(fishers[1], fishers[0])


def _slot_list(method):
    return [v for values in method.regularizer.slots.variables().values() for v in values]


# -- the pytest side
@pytest.mark.parametrize("over,pattern", [
    (dict(strategy="tpu"), r"--strategy='tpu' is not allowed; allowed: default, mirrored, multiworker"),
    (dict(cpu_replicas=-1), r"--cpu_replicas=-1 .*0 or a positive integer"),
])
def test_bad_strategy_flags_are_named(tmp_path, over, pattern):
    from dgm_keras import train  # noqa: PLC0415

    values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
    values.update(data_dir=str(tmp_path / "d"), workdir=str(tmp_path / "w"), export_dir=str(tmp_path / "e"), **over)
    with pytest.raises(train.FlagError, match=pattern):
        train.check_flags(train.resolve(values, given=set(over) | {"data_dir", "workdir", "export_dir"})[0])


def test_every_method_takes_a_strategy(tmp_path):
    from dgm_keras import config, train  # noqa: PLC0415

    assert config.DISTRIBUTED_METHODS == config.METHOD_NAMES  # each is checked below (baseline_checks)
    for method in config.METHOD_NAMES:
        values = {name: train.FLAGS[name].default for name in train.FLAG_NAMES}
        over = dict(data_dir=str(tmp_path / "d"), workdir=str(tmp_path / "w"), export_dir=str(tmp_path / "e"),
                    strategy="mirrored", method=method)
        values.update(over)
        train.check_flags(train.resolve(values, given=set(over))[0])


@pytest.fixture(scope="module")
def step_results(mnist_small_dir):
    out = _run([os.path.abspath(__file__), "step", mnist_small_dir])
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def test_two_replicas(step_results):
    assert step_results["replicas"] == 2


@pytest.mark.parametrize("case", ["classifier", "critic_synced_bn"])
def test_split_step_equals_whole_batch_step(step_results, case):
    """Loss scaling (gradients summed over replicas = the whole batch's), and for the critic the
    generator's latents and labels: each replica must take its own rows of the global draw."""
    r = step_results[case]
    assert r["same_start"]
    assert r["moved"] > 1e-4  # the step changed the weights
    assert r["allclose"], r["max_diff"]
    for name, value in r["logs_single"].items():  # logged values are the global means
        assert r["logs_mirrored"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


# How far 2 replicas may be from one device, relative to the largest entry of each array (for
# the variables, of the steps' change: a change is a difference of nearly equal weights, so it
# keeps fewer exact digits): only float rounding may differ (the replicas' partial sums added,
# instead of one sum). Measured on this CPU: what a task's start computes (EWC's Fisher, each
# replica summing half of the examples) 2.8e-7, 1.9e-6 for 3 examples in batches of 2; the steps'
# changes 1.3e-5 to 5.8e-5 (SI-M); the task's end (Fisher, SI's and RWalk's importance, iCaRL's
# class means and herding) up to 3.3e-6. Tried: dropping the loss's scale, the penalty's scale,
# the all-reduce of SI's and RWalk's gradients, DGR's per-part rows or MeRGAN's split alignment
# batch puts the steps 0.13 to 13 apart (and the ends 0.6 to 5), far outside these.
BASELINE_RTOL = {"setup": 1e-4, "step": 1e-3, "end": 1e-4}


@pytest.mark.parametrize("case", ["ewc", "si_m", "rwalk", "icarl", "dgr", "mergan_ra"])
def test_baseline_split_steps_equal_whole_batch_steps(step_results, case):
    """EWC, SI-M, RWalk, iCaRL, DGR and MeRGAN-RA at a second task (regulariser, distillation,
    replay on): what the task's start computes, the variables and statistics after the steps,
    and the task's end's work, on 2 replicas as on one device; statistics a step keeps on each
    replica's copy stay equal across the copies."""
    r = step_results[case]
    assert r["moved"] > 1e-4  # the steps changed the weights
    assert r["start_rel"] <= BASELINE_RTOL["setup"] and r["setup_rel"] <= BASELINE_RTOL["setup"]
    assert r["step_rel"] <= BASELINE_RTOL["step"]
    assert r["end_rel"] <= BASELINE_RTOL["end"]
    assert r["replica_spread"] == 0.0
    for name, value in r["logs_single"].items():  # logged values are the global means
        assert r["logs_mirrored"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_fisher_of_a_batch_smaller_than_the_replicas(step_results):
    # Each replica takes a share of a batch's examples (distribution.across_replicas); a share of
    # none failed (tf.vectorized_map over no example), so a batch is padded with weight-0 rows.
    assert step_results["fisher_uneven_rel"] <= BASELINE_RTOL["setup"]


def test_per_replica_batch_norm_is_not_the_whole_batch_step(step_results):
    """The generator's task heads normalise with batch statistics; unsynced, each replica
    uses its own half's, so the fakes and hence the critic update differ (README, Scaling out)."""
    r = step_results["critic_replica_bn"]
    assert r["same_start"] and not r["allclose"]


RUN_FLAGS = ["--classes_per_task=5", "--steps_per_task=2", "--batch_size=16", "--replay_per_class=16",
             "--validation_fraction=0", "--checkpoint_every=0",  # 0: the default chunks (2 steps a call on one device)
             # lambda_gp 1, at which AGREEMENT was measured: the unsynced batch norms below give each replica
             # slightly other fakes, and at the default 10 the penalty's weight turns that into d_loss 27% apart
             # after two steps (measured, session 14); what this module checks is the strategy, not lambda_gp.
             "--gp_weight=1"]
# How far the 2-replica run may be from the one-device run: (accuracy, relative last loss).
# finetune: the same training (README, Scaling out), up to float rounding (measured: 0 and 7e-5).
# dgmw: the generator's task batch norms are not synced, so it "differs a little" (measured, with
# the stream as one device's: 0.023 and 1%; with the stream of the bug below: 0.09 and 15%).
AGREEMENT = {"finetune": (0.002, 1e-3), "dgmw": (0.05, 0.05)}
# Two worker processes against the mirrored run (the same 2 replicas, each with its own batch
# norm statistics): the same training; only the all-reduce's float summation may differ, and over
# a run's steps it compounds: measured (dgmw, session 5) accuracy equal, gradient_penalty 1.2e-3
# apart, the other losses under 1e-3. A wrong loss scale or a replica training alone is O(1).
# Accuracy: on the tests' small MNIST (conftest.SMALL_MNIST: about 460 test images a task of five
# classes) one image decided the other way is 0.0022: measured once (0.2478 against 0.25); two
# images are allowed.
MULTIWORKER_AGREEMENT = (0.005, 1e-2)


def _finish(procs, timeout=600):
    """Waits for processes started together; all must exit 0."""
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    assert [p.returncode for p in procs] == [0] * len(procs), [err[-3000:] for _, err in outputs]


@pytest.fixture(scope="module", params=["finetune", "dgmw"])
def runs(request, mnist_small_dir, tmp_path_factory):
    """The same short command on 2 CPU replicas (MirroredStrategy) and on one device."""
    method = request.param
    tmp = tmp_path_factory.mktemp(f"runs_{method}")
    out = {"method": method, "tmp": tmp}
    procs = {name: subprocess.Popen(  # side by side: two processes that each keep a core only partly busy
        [sys.executable, "-m", "dgm_keras.train", *strategy, f"--method={method}", *RUN_FLAGS, f"--data_dir={mnist_small_dir}",
         f"--workdir={tmp / name / 'run'}", f"--export_dir={tmp / name / 'exports'}"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, strategy in (("mirrored", ["--strategy=mirrored", "--cpu_replicas=2"]), ("single", []))}
    _finish(list(procs.values()))
    for name in procs:
        with open(tmp / name / "run" / "results.json") as f:
            out[name] = json.load(f)
    return out


def test_mirrored_run_completes(runs):
    results, method = runs["mirrored"], runs["method"]
    assert results["complete"] and results["flags"]["strategy"] == "mirrored"
    assert [len(row) for row in results["accuracy_matrix"]] == [1, 2] and len(results["A_t"]) == 2
    assert all(0.0 <= v <= 1.0 for row in results["accuracy_matrix"] for v in row)
    assert results["last_losses"] and all(np.isfinite(v) for v in results["last_losses"].values())
    assert os.path.isdir(runs["tmp"] / "mirrored" / "exports" / f"mnist_{method}_5cpt_seed0" / "classifier" / "2")


def _assert_agree(got, want, accuracy_tol, loss_rtol):
    """Same hyperparameters, accuracy matrices within ``accuracy_tol``, last losses within ``loss_rtol``."""
    assert got["hyperparameters"] == want["hyperparameters"]
    np.testing.assert_allclose(np.concatenate(got["accuracy_matrix"]), np.concatenate(want["accuracy_matrix"]),
                               rtol=0, atol=accuracy_tol)
    assert got["last_losses"].keys() == want["last_losses"].keys()
    for name, value in want["last_losses"].items():
        assert got["last_losses"][name] == pytest.approx(value, rel=loss_rtol, abs=1e-6), name


def test_mirrored_run_matches_the_one_device_run(runs):
    # It failed (an xfail) while Keras 3's fit took a first batch from one iterator of the task's
    # reshuffling pipeline and trained on a second: distribution.prepare_for_fit skips that.
    _assert_agree(runs["mirrored"], runs["single"], *AGREEMENT[runs["method"]])


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def workers(mnist_small_dir, tmp_path_factory):
    """The mirrored command's dgmw run on two worker processes on 127.0.0.1 (TF_CONFIG,
    --strategy=multiworker, one CPU replica each: the same 2 replicas and global batch)."""
    tmp = tmp_path_factory.mktemp("multiworker")
    ports = [_free_port(), _free_port()]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dgm_keras.train", "--strategy=multiworker", "--method=dgmw", *RUN_FLAGS,
             f"--data_dir={mnist_small_dir}", f"--workdir={tmp / f'w{index}' / 'run'}", f"--export_dir={tmp / f'w{index}' / 'exports'}"],
            cwd=ROOT, env={**ENV, "TF_CONFIG": json.dumps(config)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    _finish(procs)
    results = []
    for index in range(2):
        with open(tmp / f"w{index}" / "run" / "results.json") as f:
            results.append(json.load(f))
    return results


@pytest.mark.parametrize("runs", ["dgmw"], indirect=True)
def test_two_workers_finish_agree_and_match_the_mirrored_run(workers, runs):
    # Both workers end, with the same results (one synchronous training); worker 0's equal the
    # same command on 2 logical devices of one process (MirroredStrategy), up to float rounding
    # of the all-reduce (tolerance: MULTIWORKER_AGREEMENT).
    first, second = workers
    assert first["complete"] and second["complete"] and first["flags"]["strategy"] == "multiworker"
    for key in ("accuracy_matrix", "A_t", "last_losses"):
        assert first[key] == second[key], key
    _assert_agree(first, runs["mirrored"], *MULTIWORKER_AGREEMENT)


if __name__ == "__main__" and sys.argv[1:2] == ["step"]:
    step_check(sys.argv[2])
