"""A quiet start: TensorFlow's C++ start-up notices kept off the user's console, errors kept on.

``import tensorflow`` and its first look at the devices print, through absl's C++ logging
before it is initialised (so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them), lines that are not
the user's business: the oneDNN notice, "Could not find cuda drivers", the CPU-feature
notice, and on a machine without an NVIDIA driver "failed call to cuInit", some of them
twice. ``tensorflow_imported`` passes stderr through a filter while that happens and drops
exactly those lines; every other line (a real error, a Python traceback) goes through at
once, as it was written. ``--tf_log`` (``show_all=True``) turns the filter off and lowers
TensorFlow's log level to INFO, unless the user set ``TF_CPP_MIN_LOG_LEVEL`` themselves.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# Each: a start-up line that says nothing the user must act on.
NOTICES = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
)
# An error only where there is no NVIDIA driver to initialise; on a GPU machine it is real and shown.
NO_GPU_ERRORS = (re.compile(r"^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit"),)


def has_nvidia_driver() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")


def is_notice(line: str, gpu_driver: bool) -> bool:
    """Whether ``line`` (without its newline) is start-up noise to drop."""
    patterns = NOTICES if gpu_driver else NOTICES + NO_GPU_ERRORS
    return any(p.search(line) for p in patterns)


def _user_set_log_level() -> bool:
    import dgm_keras  # noqa: PLC0415 (records what the environment held before it set its default)

    return dgm_keras.USER_TF_CPP_MIN_LOG_LEVEL is not None


@contextlib.contextmanager
def filtered_stderr(enabled: bool = True):
    """Within the block, file descriptor 2 (C++ and Python alike) goes through ``is_notice``:
    a thread forwards every other line at once, so nothing real is held back or lost."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    gpu = has_nvidia_driver()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if not is_notice(raw.decode("utf-8", "replace").rstrip("\n"), gpu):
                    os.write(saved, raw)

    thread = threading.Thread(target=forward, name="quiet-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread reads to the end and stops
        thread.join(timeout=10)
        os.close(saved)


def tensorflow_imported(show_all: bool = False):
    """Imports TensorFlow and lists its devices (where the CUDA probe logs), quietly unless
    ``show_all``; returns the module."""
    if show_all and not _user_set_log_level():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    with filtered_stderr(enabled=not show_all):
        import tensorflow as tf  # noqa: PLC0415

        tf.config.list_physical_devices()
    if not show_all:
        from absl import logging  # noqa: PLC0415 (TFDS logs each dataset it opens at INFO)

        tf.get_logger().setLevel("ERROR")
        logging.set_verbosity(logging.WARNING)
    return tf
