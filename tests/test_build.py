"""BUILD lists every module, benchmark and test file (CI does not run Bazel)."""

import os
import re

from conftest import ROOT


def test_every_python_file_is_in_build():
    with open(os.path.join(ROOT, "BUILD")) as f:
        listed = set(re.findall(r'"([\w/]+\.py)"', f.read()))
    missing = []
    for folder in ("dgm_keras", "tests", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                    if rel not in listed:
                        missing.append(rel)
    assert not missing, f"not in BUILD: {missing}"
    assert all(os.path.exists(os.path.join(ROOT, p)) for p in listed), "BUILD names a file that does not exist"
