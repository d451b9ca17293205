"""benchmarks/mask_usage.py reads an export's past masks and splits each task's mask into new and reused."""

import os
import subprocess
import sys

import numpy as np
from conftest import ROOT

from dgm_keras import data, export, networks


def test_each_tasks_mask_splits_into_new_and_reused_units(tmp_path):
    gen = networks.Generator((6, 5, 4), 10, 1, "activation", num_past_tasks=2, nz=16, name="generator").build_all()
    # Units on in task 1 and task 2 of each layer, exported as the second task ends (version 2).
    past = {0: ([1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0]),  # task 2: 2 new (units 2, 3), 1 reused (unit 1)
            1: ([1, 0, 1, 0, 0], [1, 0, 1, 0, 0]),  # task 2 re-uses both, takes none
            2: ([0, 0, 0, 1], [1, 1, 1, 1])}  # task 2: 3 new, 1 reused
    for index, layer in enumerate(gen.masked_layers):
        layer.past_masks["units"].assign(np.array(past[index], np.uint8))
    path = export.export_generator(gen, data.make_scenario("mnist", 1), 1, str(tmp_path / "run" / "generator"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mask_usage.py"), f"--generator={path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines == [
        "masked_convt_0/units: new / on per task (reserved after the last: 4)", "  2/2  2/3",
        "masked_convt_1/units: new / on per task (reserved after the last: 2)", "  2/2  0/2",
        "masked_convt_2/units: new / on per task (reserved after the last: 4)", "  1/1  3/4"]


def test_a_folder_without_an_export_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mask_usage.py"), f"--generator={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"--generator: --model={str(tmp_path)!r} holds neither")
