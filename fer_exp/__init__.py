"""fer_exp: facial-expression classifier experiments, configured by Hydra, recorded in MLflow."""

import os

# TensorFlow's C++ start-up chatter, before any entry point imports TensorFlow: set once, here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
