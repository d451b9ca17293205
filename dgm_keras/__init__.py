"""dgm-keras: DGM (Dynamic Generative Memory, CVPR 2019) and its baselines in Keras 3 / TensorFlow."""

import os

# oneDNN made the DGM iteration 1.3-1.5x faster on CPUs where TF leaves it off by default
# (TENSORFLOW-NOTES.md); it must be set before TensorFlow is imported. Users can still
# export TF_ENABLE_ONEDNN_OPTS=0.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
