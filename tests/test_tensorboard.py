"""TensorBoard, the run's monitor, for real: a ``tensorboard`` server on 127.0.0.1 over a finished
short run, read through its HTTP data API. Every tag the README's tour promises is served, the
values are the run's, and the accuracy matrix is a colour heatmap, not a grey grid."""

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import ROOT

KINDS = ("scalars", "images", "text")


def promised_tags() -> dict[str, list[str]]:
    """The tags README.md's tour lists, by kind (``<...>`` stands for any name without a slash)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    block = readme.split("<!-- tensorboard-tags -->", 1)[1].split("```", 2)[1]
    promised = {}
    for line in block.splitlines():
        kind, _, tags = line.partition(":")
        if kind.strip() in KINDS:
            promised[kind.strip()] = tags.split()
    assert set(promised) == set(KINDS), promised
    return promised


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(finished_run):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", f"--logdir={finished_run.workdir / 'tb'}",
                             "--host=127.0.0.1", f"--port={port}", "--load_fast=false", "--reload_interval=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:  # up, and the run's events read (the first load runs in the background)
            try:
                if _get(base, "/data/plugin/images/tags").get("."):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"tensorboard did not serve the run: {proc.stderr.read()[-2000:]}")
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(base, path, **query):
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _served(base) -> dict[str, list[str]]:
    scalars = _get(base, "/data/plugin/scalars/tags")["."]
    images = _get(base, "/data/plugin/images/tags")["."]
    text = _get(base, "/data/plugin/text/tags")["."]
    return {"scalars": sorted(scalars), "images": sorted(images), "text": sorted(text)}


def test_every_promised_tag_is_served(server):
    served = _served(server)
    for kind, patterns in promised_tags().items():
        for pattern in patterns:
            regex = re.compile("^" + re.sub(r"<[^>]+>", "[^/]+", re.escape(pattern)) + "$")
            assert any(regex.match(tag) for tag in served[kind]), (kind, pattern, served[kind])


def test_scalars_are_the_runs_figures(server, finished_run):
    results = finished_run.results

    def values(tag):
        return [(step, value) for _, step, value in _get(server, "/data/plugin/scalars/scalars", run=".", tag=tag)]

    assert values("eval/A_t") == [(1, pytest.approx(results["A_t"][0], abs=1e-6)),
                                  (2, pytest.approx(results["A_t"][1], abs=1e-6))]
    assert values("eval/A_t_selected")[-1][1] == pytest.approx(results["A_t_selected"][-1], abs=1e-6)
    assert values("eval/forgetting")[-1][1] == pytest.approx(results["forgetting"], abs=1e-6)
    names = results["scenario"]["class_names"]
    assert values(f"per_class/07_{names[7]}") == [(2, pytest.approx(results["per_class_accuracy"][1][7], abs=1e-6))]
    assert values("generator/size")[-1][1] == results["method_report"]["generator_size_after_task"][-1]


def test_accuracy_matrix_is_a_colour_heatmap(server):
    import matplotlib.image

    (last,) = [m for m in _get(server, "/data/plugin/images/images", run=".", tag="eval/accuracy_matrix")
               if m["step"] == 2]
    with urllib.request.urlopen(f"{server}/data/plugin/images/individualImage?{last['query']}", timeout=30) as r:
        png = r.read()
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.shape[0] > 150 and image.shape[1] > 150, image.shape  # not 2x2 cells of 24 px
    rgb = image[..., :3]
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 0.3  # colour (viridis), not grey


def _table(server, tag) -> dict[str, str]:
    """A text summary's two-column table, as TensorBoard renders it (HTML)."""
    (entry,) = _get(server, "/data/plugin/text/text", run=".", tag=tag)
    return dict(re.findall(r"<td>(.*?)</td>\s*<td>(.*?)</td>", entry["text"]))


def test_flags_and_hyperparameters_are_there(server, finished_run):
    flags = _table(server, "run/flags")
    assert flags["workdir"] == str(finished_run.workdir) and flags["method"] == "dgmw"
    hyperparameters = _table(server, "run/hyperparameters")
    assert hyperparameters["sparsity_weight"] == "1.0" and hyperparameters["steps_per_task"] == "15"
    assert not set(flags) & set(hyperparameters)  # each value once
    request = urllib.request.Request(f"{server}/data/plugin/hparams/experiment", data=b"{}", method="POST",
                                     headers={"X-XSRF-Protected": "1", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        experiment = json.loads(response.read())
    hparams = {h["name"] for h in experiment["hparamInfos"]}
    assert {"method", "d_lr", "sparsity_weight", "ngf", "classes_per_task"} <= hparams, hparams
