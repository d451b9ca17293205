"""The budget plot reads runs as the sweep writes them and fits accuracy against log(epochs)."""

import json
import math
import os
import subprocess
import sys

from conftest import ROOT


def _run(folder, epochs, last, complete=True):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"complete": complete, "hyperparameters": {"epochs_per_task": epochs},
                   "A_t_validation": [1.0, last], "task_seconds": [60.0 * epochs, 60.0 * epochs]}, f)


def test_points_fit_and_svg_from_sweep_folders(tmp_path):
    # A = 20 + 5 ln(epochs) exactly; the 4-epoch budget has two seeds (19 and 21 around its mean),
    # and an unfinished third seed that must not count.
    _run(tmp_path / "e1", 1, 0.20)
    _run(tmp_path / "e4" / "seed0", 4, (20 + 5 * math.log(4) - 1) / 100)
    _run(tmp_path / "e4" / "seed1", 4, (20 + 5 * math.log(4) + 1) / 100)
    _run(tmp_path / "e4" / "seed2", 4, 0.99, complete=False)
    _run(tmp_path / "e16", 16, (20 + 5 * math.log(16)) / 100)
    out = tmp_path / "plot.png"
    series = ",".join(str(tmp_path / d) for d in ("e1", "e4", "e16"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "budget_plot.py"), f"--series=toy={series}",
                           "--target=35", f"--out={out}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| toy | 4 | 2 | 26.93 ± 1.41 | 8.0 |" in proc.stdout
    assert "| toy | 1 | 1 | 20.00 (1 seed) | 2.0 |" in proc.stdout
    assert "A(last) ≈ 20.00 + 5.00·ln(epochs a task)" in proc.stdout
    assert f"35.00 at about {math.exp(3):,.0f} epochs a task (extrapolated beyond the measured range)" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_a_folder_without_a_complete_run_is_refused_in_one_line(tmp_path):
    _run(tmp_path / "e2", 2, 0.3, complete=False)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "budget_plot.py"),
                           f"--series=toy={tmp_path / 'e2'}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"budget_plot: {tmp_path / 'e2'}: no complete run (results.json with "
                                                "complete: true, in it or in seed*/)"]


def test_one_budget_joined_from_runs_in_several_folders(tmp_path):
    # The harness keeps each seed in its own --workdir: "a+b" is one budget of two runs (33 and 35),
    # not two budgets; a joined part without a complete run adds nothing.
    _run(tmp_path / "w0" / "dgmw", 5, 0.33)
    _run(tmp_path / "w1" / "dgmw", 5, 0.35)
    _run(tmp_path / "w2" / "dgmw", 5, 0.99, complete=False)
    joined = "+".join(str(tmp_path / w / "dgmw") for w in ("w0", "w1", "w2"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "budget_plot.py"), f"--series=h={joined}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| h | 5 | 2 | 34.00 ± 1.41 | 10.0 |" in proc.stdout


def _plot(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "budget_plot.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_a_plot_grows_from_its_recorded_points_without_the_old_runs(tmp_path):
    # Two budgets drawn, their runs deleted, a third budget added from the points file alone:
    # the fit runs through all three (A = 20 + 5 ln(epochs) exactly).
    _run(tmp_path / "e1", 1, 0.20)
    _run(tmp_path / "e4", 4, (20 + 5 * math.log(4)) / 100)
    out = tmp_path / "plot.png"
    proc = _plot(f"--series=toy={tmp_path / 'e1'},{tmp_path / 'e4'}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads((tmp_path / "plot.json").read_text())
    assert [p["epochs"] for p in recorded["series"]["toy"]] == [1, 4]
    assert recorded["series"]["toy"][1]["source"] == str(tmp_path / "e4")
    for d in ("e1", "e4"):
        os.remove(tmp_path / d / "results.json")
    _run(tmp_path / "e16", 16, (20 + 5 * math.log(16)) / 100)
    out2 = tmp_path / "grown.png"
    proc = _plot(f"--recorded={tmp_path / 'plot.json'}", f"--series=toy={tmp_path / 'e16'}", "--target=35", f"--out={out2}")
    assert proc.returncode == 0, proc.stderr
    assert "| toy | 1 | 1 | 20.00 (1 seed) | 2.0 |" in proc.stdout and "| toy | 16 | 1 |" in proc.stdout
    assert "A(last) ≈ 20.00 + 5.00·ln(epochs a task)" in proc.stdout
    assert [p["epochs"] for p in json.loads((tmp_path / "grown.json").read_text())["series"]["toy"]] == [1, 4, 16]
    assert out2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recorded_points_refused_in_one_line_when_corrupt_or_repeated(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"series": {"toy": [{"epochs": 4}]}}')
    proc = _plot(f"--recorded={bad}")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"budget_plot: --recorded={bad}: not a points file (KeyError")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"series": {"toy": [{"epochs": 4, "seeds": 1, "mean": 30.0, "std": 0.0,
                                                     "minutes": 5.0, "source": "session 1"}]}}))
    _run(tmp_path / "e4", 4, 0.31)
    proc = _plot(f"--recorded={good}", f"--series=toy={tmp_path / 'e4'}")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"budget_plot: series 'toy': 4 epochs a task given twice (session 1 "
                                                f"and {tmp_path / 'e4'}); expected one point a budget"]
    proc = _plot()
    assert proc.returncode != 0 and "nothing to draw" in proc.stderr


def test_a_json_that_is_not_a_points_file_is_never_overwritten(tmp_path):
    _run(tmp_path / "e4", 4, 0.31)
    other = tmp_path / "plots.json"
    other.write_text('{"A_t.png": [1.0]}')
    proc = _plot(f"--series=toy={tmp_path / 'e4'}", f"--out={tmp_path / 'plots.png'}")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "exists and is not a points file" in proc.stderr
    assert other.read_text() == '{"A_t.png": [1.0]}' and not (tmp_path / "plots.png").exists()
