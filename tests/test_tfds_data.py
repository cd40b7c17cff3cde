"""The real oxford_iiit_pet builder, offline, on synthetic and on broken raw folders."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import tfds_prepare
from dataset import staging, synthetic as synthetic_archive
from support.images import BROKEN, ODD_VALID, damage


def _read(files):
    examples = []
    for record in tf.data.TFRecordDataset(files):
        ex = tf.train.Example.FromString(record.numpy()).features.feature
        examples.append(ex)
    return examples


def _decoded(ex):
    image = tf.io.decode_image(ex["image"].bytes_list.value[0], channels=3, expand_animations=False)
    mask = tf.io.decode_image(ex["segmentation_mask"].bytes_list.value[0], channels=1, expand_animations=False)
    return image.numpy(), mask.numpy()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return tfds_prepare.prepare(tmp_path_factory.mktemp("tfds"), "synthetic", synthetic=(12, 6, 0))


def test_synthetic_built_by_the_real_builder(synthetic):
    assert (synthetic.name, synthetic.version, synthetic.source) == ("oxford_iiit_pet", "4.0.0", "synthetic")
    assert synthetic.num_examples == {"train": 12, "test": 6}
    assert synthetic.skipped == {}
    for split, count in synthetic.num_examples.items():
        assert tf.io.gfile.glob(synthetic.file_patterns[split]) == synthetic.files[split]
        examples = _read(synthetic.files[split])
        assert len(examples) == count
        for ex in examples:
            assert set(ex) == {"image", "segmentation_mask", "label", "species", "file_name", "head_bbox"}
            image, mask = _decoded(ex)
            assert image.shape[:2] == mask.shape[:2]
            assert set(np.unique(mask).tolist()) <= {1, 2, 3}
            breed, class_id, species = next(b for b in synthetic_archive.BREEDS
                                            if ex["file_name"].bytes_list.value[0].decode().startswith(b[0] + "_"))
            # The builder stores 0-based ids.
            assert ex["label"].int64_list.value[0] == class_id - 1
            assert ex["species"].int64_list.value[0] == species - 1
            bbox = list(ex["head_bbox"].float_list.value)
            assert (any(bbox) if split == "train" else not any(bbox)), "head boxes come from trainval XMLs only"


def test_second_prepare_reuses_and_reports_the_same(synthetic):
    mtimes = [os.path.getmtime(f) for f in synthetic.files["train"]]
    again = tfds_prepare.prepare(synthetic.data_dir, "synthetic", synthetic=(12, 6, 0))
    assert again == synthetic
    assert [os.path.getmtime(f) for f in again.files["train"]] == mtimes


def test_other_source_in_same_data_dir_is_an_error(synthetic):
    with pytest.raises(ValueError, match="already holds"):
        tfds_prepare.prepare(synthetic.data_dir, "synthetic", synthetic=(12, 6, 1))


def test_data_drawn_by_another_generator_version_is_an_error(synthetic, monkeypatch):
    # Same sizes and seed, different drawings: reusing the old pictures would be silent and wrong.
    monkeypatch.setattr(synthetic_archive, "GENERATOR_VERSION", synthetic_archive.GENERATOR_VERSION + 1)
    with pytest.raises(ValueError, match="already holds"):
        tfds_prepare.prepare(synthetic.data_dir, "synthetic", synthetic=(12, 6, 0))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    raw = synthetic_archive.write_archive(tmp_path_factory.mktemp("raw"), 16, 4, seed=5)
    return raw, damage(raw)


def test_broken_samples_skipped_and_counted_by_reason(damaged, tmp_path):
    raw, cases = damaged
    prepared = tfds_prepare.prepare(tmp_path / "tfds", "raw-dir", raw_dir=raw)
    assert prepared.source == "raw-dir"
    assert prepared.skipped == {"unreadable_image": 2, "missing_image": 1, "missing_trimap": 1,
                                "trimap_size_mismatch": 1, "bad_trimap_values": 1,
                                "malformed_line": 1, "duplicate_name": 1}
    assert prepared.repaired == {"image_tiff_to_jpeg": 1, "trimap_to_8bit_png": 1}
    assert prepared.num_examples == {"train": 16 - len(BROKEN), "test": 4}
    stored = {ex["file_name"].bytes_list.value[0].decode()[:-4]: ex for ex in _read(prepared.files["train"])}
    assert not set(stored) & {cases[c] for c in BROKEN}
    for case in ODD_VALID:
        image, mask = _decoded(stored[cases[case]])
        assert image.shape[-1] == 3 and set(np.unique(mask).tolist()) <= {1, 2, 3}
    # The Image feature stores file bytes verbatim: PNG-named-.jpg stays PNG, CMYK stays CMYK JPEG.
    assert stored[cases["png_as_jpg"]]["image"].bytes_list.value[0].startswith(b"\x89PNG")
    cmyk = Image.open(io.BytesIO(stored[cases["cmyk"]]["image"].bytes_list.value[0]))
    assert (cmyk.format, cmyk.mode) == ("JPEG", "CMYK")
    # A second call reports the same numbers without rebuilding.
    assert tfds_prepare.prepare(tmp_path / "tfds", "raw-dir", raw_dir=raw) == prepared


def test_strict_raises_naming_the_file(damaged, tmp_path):
    raw, cases = damaged
    with pytest.raises(staging.BrokenSampleError, match=f"{cases['truncated']}.jpg: unreadable_image"):
        tfds_prepare.prepare(tmp_path / "tfds", "raw-dir", raw_dir=raw, strict=True)
    assert not (tmp_path / "tfds" / "oxford_iiit_pet" / "4.0.0").exists()


def test_split_left_empty_is_an_error(tmp_path):
    raw = synthetic_archive.write_archive(tmp_path / "raw", 2, 1, seed=0)
    (raw / "images" / (raw / "annotations" / "test.txt").read_text().split()[0]).with_suffix(".jpg").unlink()
    with pytest.raises(staging.EmptySplitError, match="split 'test' is empty.*missing_image"):
        staging.stage(raw, tmp_path / "staging")


def test_bad_head_box_xml_is_dropped_or_strict_error(tmp_path):
    raw = synthetic_archive.write_archive(tmp_path / "raw", 2, 1, seed=0)
    name = (raw / "annotations" / "trainval.txt").read_text().split()[0]
    (raw / "annotations" / "xmls" / f"{name}.xml").write_text("<annotation><size>")
    skipped, repaired = staging.stage(raw, tmp_path / "staging")
    assert (skipped, repaired) == ({}, {"bad_xml_dropped": 1})
    assert name in (tmp_path / "staging" / "annotations" / "trainval.txt").read_text()
    assert not (tmp_path / "staging" / "annotations" / "xmls" / f"{name}.xml").exists()
    with pytest.raises(staging.BrokenSampleError, match=f"{name}.xml: bad_xml"):
        staging.stage(raw, tmp_path / "strict", strict=True)
