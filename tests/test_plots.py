"""dgm_keras.plots on a finished tiny run: every figure is written, and the numbers drawn are the run's."""

import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import pytest

from conftest import ROOT
from dgm_keras import plots, runs


def _plots(*args):
    return subprocess.run([sys.executable, "-m", "dgm_keras.plots", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)


def test_plots_of_a_finished_run(finished_run, tmp_path):
    out = tmp_path / "plots"
    proc = _plots(f"--runs={finished_run.root / 'runs'}", f"--out={out}", "--per_class=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = ["A_t_mnist_2x5.png", "generator_size_mnist_2x5.png", "accuracy_matrix_dgmw_mnist_2x5.png",
                "replay_dgmw_mnist_2x5.png"]
    assert proc.stdout.split() == [str(out / name) for name in expected]
    drawn = json.loads((out / "plots.json").read_text())
    results = finished_run.results
    assert drawn["A_t_mnist_2x5.png"] == {"dgmw": results["A_t"]}
    assert drawn["generator_size_mnist_2x5.png"] == {"dgmw": results["method_report"]["generator_size_after_task"]}
    assert drawn["accuracy_matrix_dgmw_mnist_2x5.png"] == results["accuracy_matrix"]
    assert drawn["replay_dgmw_mnist_2x5.png"] == {"classes": 10, "per_class": 4}
    for name in expected:
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100, (name, image.shape)
    assert proc.stderr.strip() == "", proc.stderr


def test_an_ablation_is_its_own_line_not_a_seed(finished_run, tmp_path):
    # Two copies of the run, one as if run with another sparsity weight: two lines, never averaged.
    root = tmp_path / "runs"
    for name, weight in (("usual", None), ("ablation", 0.08)):
        shutil.copytree(finished_run.workdir, root / name, ignore=shutil.ignore_patterns("tb", "checkpoints"))
        if weight is not None:
            path = root / name / "results.json"
            results = json.loads(path.read_text())
            results["hyperparameters"]["sparsity_weight"] = weight
            results["A_t"] = [a / 2 for a in results["A_t"]]
            results["settings"]["sources"]["sparsity_weight"] = "command line"
            results["exports"] = []
            path.write_text(json.dumps(results))
    complete, partial = plots.load(str(root))
    assert partial == [] and len(complete) == 2
    drawn = plots.draw_all(complete, str(tmp_path / "out"), per_class=2)
    a_t = finished_run.results["A_t"]
    assert drawn["A_t_mnist_2x5.png"] == {"dgmw": a_t, "dgmw (sparsity_weight=0.08)": [a / 2 for a in a_t]}


def test_runs_are_found_through_links_once(finished_run, tmp_path):
    # A folder of links to chosen runs is a set to plot; a link back up the tree does not loop, and a
    # run reached twice (directly and through a link) is read once.
    root = tmp_path / "chosen"
    root.mkdir()
    (root / "dgmw").symlink_to(finished_run.workdir, target_is_directory=True)
    (root / "again").symlink_to(finished_run.workdir, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    found = runs.find_runs(str(root))
    assert len(found) == 1 and found[0]["complete"], found
    assert os.path.realpath(found[0]["workdir"]) == os.path.realpath(finished_run.workdir)
    complete, partial = plots.load(str(root))
    assert partial == [] and [r["A_t"] for r in complete] == [finished_run.results["A_t"]]


def test_bad_input(tmp_path):
    proc = _plots("--runs=/no/such")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "plots: --runs='/no/such': no such folder; allowed: a folder of runs, e.g. runs/benchmark"
    empty = _plots(f"--runs={tmp_path}")
    assert empty.returncode == 1 and empty.stderr.strip().startswith("plots: no complete run under")


@pytest.mark.parametrize("bad", ["--per_class=0", "--per_class=33"])
def test_bad_per_class(bad):
    proc = _plots(bad)
    assert proc.returncode == 1 and proc.stderr.strip().startswith(f"plots: {bad} is not allowed; allowed: an integer in [1, 32]")
