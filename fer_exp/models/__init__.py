"""Models: the builders conf/model/ names, trained models with their class names, and their evaluation.

builders    plain arguments in, an uncompiled keras.Model out (MODELS); training FLOPs
layers      BatchNormalization on TensorFlow's fused kernel, the whitening stem, Keras-only copies
saved       the class list that travels with a model; load_model from a file or an MLflow URI
evaluation  TTA probabilities, accuracy, report, confusion matrix; log_evaluation on a run
"""

from fer_exp import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(["MODELS", "build_model", "training_flops"], "builders"),
        **dict.fromkeys(["FusedBatchNormalization", "portable", "whiten"], "layers"),
        **dict.fromkeys(["CLASSES_KEY", "FER7_FILE", "classes_for", "load_model", "read_classes"], "saved"),
        **dict.fromkeys(["Evaluation", "evaluate", "log_evaluation", "make_views"], "evaluation"),
    },
)
