"""The real data, where ../shared/fer2013 exists; skipped elsewhere."""

import pytest
from helpers.data import CLASSES
from helpers.runner import SHARED_FER

from fer_exp.data import load_folder_split

pytestmark = pytest.mark.skipif(not SHARED_FER.is_dir(), reason=f"{SHARED_FER} not present")


def test_validation_split_loads_with_the_published_class_counts(tmp_path):
    val = load_folder_split(SHARED_FER, "validation", CLASSES, 48, cache_dir=str(tmp_path))
    assert val.counts(7).tolist() == [467, 56, 496, 895, 607, 653, 415]
    assert val.images.shape == (3589, 48, 48) and not val.skipped
    # every image lies in the folder of its label
    assert all(f"/{CLASSES[lab]}/" in src for src, lab in zip(val.sources, val.labels))
