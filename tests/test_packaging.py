"""pyproject.toml: a wheel with the package, its settings files and the commands, which run
from anywhere once installed (not only from the repository root)."""

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT

COMMANDS = ("dgm-train", "dgm-evaluate", "dgm-sample", "dgm-runs", "dgm-plots", "dgm-benchmark", "dgm-prepare-data")


def test_wheel_installs_the_package_its_settings_and_commands(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, item), src / item)
    for folder in ("dgm_keras", "flags"):
        shutil.copytree(os.path.join(ROOT, folder), src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").iterdir()
    names = zipfile.ZipFile(wheel).namelist()
    assert "dgm_keras/flagfiles/mnist_dgmw.cfg" in names and "dgm_keras/methods/dgm.py" in names
    site = tmp_path / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert all((site / "bin" / c).exists() for c in COMMANDS), sorted(os.listdir(site / "bin"))
    elsewhere = tmp_path / "elsewhere"  # no flags/ here: the settings come from the package
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    found = subprocess.run([sys.executable, "-c", "from dgm_keras import settings; "
                            "print(settings.SETTINGS_DIR); print(settings.load('mnist', 'dgma')['method'][0])"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(site / "dgm_keras" / "flagfiles"), "dgma"]
    runs = subprocess.run([str(site / "bin" / "dgm-runs"), f"--root={elsewhere}"], capture_output=True, text=True,
                          cwd=elsewhere, env=env, timeout=120)
    assert runs.returncode == 0 and runs.stdout.startswith("runs: no runs under"), runs.stderr
    helped = subprocess.run([str(site / "bin" / "dgm-train"), "--help"], capture_output=True, text=True,
                            cwd=elsewhere, env=env, timeout=120)
    assert helped.returncode == 0 and "data and scenario" in helped.stdout, helped.stderr
