"""fer_exp: facial-expression classifier experiments, configured by Hydra, recorded in MLflow."""

import importlib
import os

# TensorFlow's C++ start-up chatter, before any entry point imports TensorFlow: set once, here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __all__) of a package (PEP 562) that re-exports `exports` (name -> submodule), each
    submodule imported on first use: `from fer_exp.data import DataError` does not load TensorFlow just
    because the same package also holds the tf.data pipeline."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__, sorted(exports)
