"""toolkit.seg_images.write_outputs: the files one image's `toolkit predict` writes, and their values."""

from __future__ import annotations

import cv2
import numpy as np

from toolkit.seg_images import output_stem, write_outputs

BINARY = {"kind": "binary"}
CLASSES = {"kind": "classes", "values": [0, 1, 2], "names": ["glioma", "meningioma"]}


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _case(h=12, w=10):
    image = np.full((h, w, 1), 90, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[3:7, 2:5] = 1
    return image, mask


def test_binary_writes_mask_and_overlay_only(tmp_path):
    image, mask = _case()
    (tmp_path / "in" / "p1").mkdir(parents=True)  # a patient subfolder of the --input folder
    stem = output_stem(tmp_path / "in" / "p1" / "s_3.png", tmp_path / "in", tmp_path / "out")
    told = write_outputs(stem, image, mask, np.zeros((1, 12, 10), np.float32), BINARY)
    assert told == ""
    assert sorted(p.name for p in (tmp_path / "out" / "p1").iterdir()) == ["s_3_mask.png", "s_3_overlay.png"]
    written = _read(tmp_path / "out" / "p1" / "s_3_mask.png")
    assert written.dtype == np.uint8 and set(np.unique(written)) == {0, 255}
    np.testing.assert_array_equal(written == 255, mask == 1)
    assert _read(tmp_path / "out" / "p1" / "s_3_overlay.png").shape == (12, 10, 3)


def test_disagreement_and_class_map(tmp_path):
    image, mask = _case()
    dispute = np.zeros((12, 10), np.float32)
    dispute[0, 0], dispute[0, 1] = 0.5, 1.0
    probs = np.zeros((3, 12, 10), np.float32)
    probs[0] = 1.0
    probs[:, 3:7, 2:5] = np.array([0.1, 0.2, 0.7], np.float32)[:, None, None]  # class 2 (meningioma) inside the mask
    told = write_outputs(tmp_path / "x", image, mask, probs, CLASSES, dispute)
    assert told == ", class meningioma (label map x_classes.png)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_classes.png", "x_disagreement.png", "x_mask.png",
                                                          "x_overlay.png"]
    d = _read(tmp_path / "x_disagreement.png")
    assert (d[0, 0], d[0, 1], d[5, 5]) == (128, 255, 0)
    labels = _read(tmp_path / "x_classes.png")
    assert set(np.unique(labels[3:7, 2:5])) == {2} and labels.sum() == 2 * 12
