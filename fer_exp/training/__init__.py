"""Training one job: train() from a resolved config to a recorded run, its Keras callbacks, and the
machine's settings (precision, kernels, threads) it trains with.

    job        train(config): data, model, fit, evaluation, all recorded
    compiled   the model a config describes with its optimizer, schedule, loss and metrics
    callbacks  signals, time budgets, per-epoch metrics and speed, checkpoints
    teachers   a distilled job's teachers: found, checked, their probabilities of the training images
    machine    the CPU and GPUs, the precision and kernels fastest there (no TensorFlow needed)
"""

from fer_exp import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {"train": "job", "compile_model": "compiled"})
