"""Data, from files to batches: class folders, fer2013.csv, the synthetic set and photos decoded into
uint8 arrays (Splits, cached on disk), then the tf.data pipeline with its augmentation.

    split      Split (images, labels, sources), DataError, the on-disk cache
    decode     image files of any kind into gray square faces
    folders    <root>/<split>/<class>/*   fer_csv  fer2013.csv by Usage   synthetic  drawn faces
    sources    what a `data` config loads: its splits, checked, counted, digested
    faces      faces in photos and video frames (MTCNN, Haar), cropped as FER2013 is
    augment    training-time augmentation layers      pipeline  uint8 arrays -> float batches
"""

from fer_exp import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(["DataError", "Split"], "split"),
        **dict.fromkeys(["decode_files"], "decode"),
        **dict.fromkeys(["REMOTE_ENV", "load_folder_split"], "folders"),
        **dict.fromkeys(["make_faces", "synthetic_split"], "synthetic"),
        **dict.fromkeys(
            [
                "DEFAULT_ROOT",
                "class_weights",
                "count_table",
                "data_digests",
                "limit_per_class",
                "load_data",
                "with_fallback",
            ],
            "sources",
        ),
        **dict.fromkeys(["DETECTORS", "LANDMARKS", "Face", "make_detector"], "faces"),
        **dict.fromkeys(["RandomAffine", "build_augmenter"], "augment"),
        **dict.fromkeys(["make_dataset", "to_inputs"], "pipeline"),
    },
)
