"""Start-up without TensorFlow's C++ notices, and nothing real hidden (dgm_keras/quiet.py)."""

import os
import subprocess
import sys

from conftest import ROOT
from dgm_keras import quiet

# Lines as TensorFlow 2.21 printed them at the start of a run on a CPU machine.
SEEN = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796284760.932958   11295 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796284760.933308   11295 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "I0000 00:00:1796290629.419991    9249 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
]
CUINIT = ("E0000 00:00:1796284763.029379   11295 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)")


def test_the_notices_are_dropped_and_real_lines_kept():
    assert all(quiet.is_notice(line, gpu_driver=False) for line in SEEN)
    assert quiet.is_notice(CUINIT, gpu_driver=False)
    assert not quiet.is_notice(CUINIT, gpu_driver=True)  # with a driver, a failing cuInit is a real error
    for real in ("E0000 00:00:1.0  1 op_kernel.cc:1] OP_REQUIRES failed at conv_ops.cc: INVALID_ARGUMENT",
                 "Traceback (most recent call last):", "train: --method='x' is not allowed; allowed: dgmw",
                 "W0000 00:00:1.0  1 port.cc:1] something else from port.cc"):
        assert not quiet.is_notice(real, gpu_driver=False), real


def _python(code):
    """``code`` in a fresh interpreter, with no TF_CPP_MIN_LOG_LEVEL of the user's (it would win)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**env, "PYTHONPATH": ROOT})


def test_tensorflow_starts_quietly_and_a_real_error_still_shows():
    code = ("import os, sys\n"
            "from dgm_keras import quiet\n"
            "with quiet.filtered_stderr():\n"
            "    os.write(2, b'E0000 00:00:1.0  1 real.cc:1] a real error\\n')\n"
            "    print('python says so too', file=sys.stderr)\n"
            "tf = quiet.tensorflow_imported()\n"
            "print(tf.constant(2).numpy() + 1)\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"
    lines = proc.stderr.splitlines()
    assert lines[:2] == ["E0000 00:00:1.0  1 real.cc:1] a real error", "python says so too"], lines
    assert not any(quiet.is_notice(line, quiet.has_nvidia_driver()) for line in lines), lines
    assert not any("oneDNN" in line or "cuda" in line.lower() for line in lines), lines


def test_tf_log_shows_them():
    proc = _python("from dgm_keras import quiet\nquiet.tensorflow_imported(show_all=True)\n")
    assert proc.returncode == 0, proc.stderr
    assert "oneDNN custom operations are on" in proc.stderr
