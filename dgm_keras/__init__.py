"""dgm-keras: DGM (Dynamic Generative Memory, CVPR 2019) and its baselines in Keras 3 / TensorFlow."""

import os

# oneDNN made the DGM iteration 1.3-1.5x faster on CPUs where TF leaves it off by default
# (TENSORFLOW-NOTES.md); it must be set before TensorFlow is imported. Users can still
# export TF_ENABLE_ONEDNN_OPTS=0.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's INFO and WARNING logs are off unless the user set a level (``--tf_log`` shows
# them: dgm_keras/quiet.py, which also drops the start-up notices this variable cannot reach).
USER_TF_CPP_MIN_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
