"""The real oxford_iiit_pet builder, offline, on synthetic and on broken raw folders."""

import functools
import http.server
import io
import os
import socket
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from components import internals, tfds_prepare
from dataset import archive as oxford, staging, synthetic as synthetic_archive
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
            breed = oxford.breed(ex["file_name"].bytes_list.value[0].decode().rpartition("_")[0])
            # The builder stores 0-based ids.
            assert ex["label"].int64_list.value[0] == breed.class_id - 1
            assert ex["species"].int64_list.value[0] == breed.species_id - 1
            bbox = list(ex["head_bbox"].float_list.value)
            assert any(bbox) if split == "train" else not any(bbox), "head boxes come from trainval XMLs only"


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


def test_like_oxford_prepares_all_37_breeds(tmp_path):
    prepared = tfds_prepare.prepare(tmp_path / "tfds", "synthetic", synthetic=(37, 10, 0), synthetic_like_oxford=True)
    assert prepared.num_examples == {"train": 37, "test": 10} and prepared.origin["like_oxford"] is True
    labels = {ex["label"].int64_list.value[0] for ex in _read(prepared.files["train"])}
    assert labels == set(range(oxford.NUM_BREEDS))


def test_like_oxford_odd_files_survive_staging_and_the_real_builder(tmp_path):
    # Enough pets to reach Abyssinian_34 (a GIF), the highest-numbered odd file below 1,300; the lists are
    # then cut to the odd files and one pet per breed, so only those go through staging and the builder.
    raw = synthetic_archive.write_archive(tmp_path / "raw", 1000, 230, seed=0, like_oxford=True)
    rows = {}
    for list_name in oxford.LIST_FILES.values():
        lines = (raw / "annotations" / list_name).read_text().splitlines()
        kept = [
            line
            for number, line in enumerate(lines)
            if number < oxford.NUM_BREEDS or line.split()[0] in synthetic_archive.ODD_IMAGES
        ]
        (raw / "annotations" / list_name).write_text("\n".join(kept) + "\n")
        rows[list_name] = [line.split()[0] for line in kept]
    prepared = tfds_prepare.prepare(tmp_path / "tfds", "raw-dir", raw_dir=raw)
    assert prepared.skipped == {}
    assert prepared.num_examples == {"train": len(rows["trainval.txt"]), "test": len(rows["test.txt"])}
    odd = {
        name: synthetic_archive.ODD_IMAGES[name]
        for names in rows.values()
        for name in names
        if name in synthetic_archive.ODD_IMAGES
    }
    assert {"rgba_png", "gif", "grayscale_jpeg", "cmyk_jpeg"} <= set(odd.values())
    # Staging turns GIFs into JPEGs (TF cannot re-encode them), and hands the builder RGB for the RGBA
    # files it re-encodes itself.
    reencoded = internals.tfds_reencoded_names()
    assert prepared.repaired == {
        "image_gif_to_jpeg": sum(kind == "gif" for kind in odd.values()),
        "image_mode_to_rgb": sum(kind == "rgba_png" and name in reencoded for name, kind in odd.items()),
    }
    stored = {}
    for split in ("train", "test"):
        for ex in _read(prepared.files[split]):
            name = ex["file_name"].bytes_list.value[0].decode()[:-4]
            image, mask = _decoded(ex)
            assert image.shape == mask.shape[:2] + (3,) and image.shape[0] >= 100 and image.shape[1] >= 100
            breed = oxford.breed(name.rpartition("_")[0])
            assert (ex["label"].int64_list.value[0], ex["species"].int64_list.value[0]) == (
                breed.class_id - 1,
                breed.species_id - 1,
            )
            stored[name] = ex
    assert len({name.rpartition("_")[0] for name in stored}) == oxford.NUM_BREEDS
    for name, kind in odd.items():
        with Image.open(io.BytesIO(stored[name]["image"].bytes_list.value[0])) as img:
            # What the builder keeps: re-encoded names become RGB JPEG; others keep their file's bytes.
            want = (
                ("JPEG", "RGB")
                if name in reencoded
                else {"grayscale_jpeg": ("JPEG", "L"), "cmyk_jpeg": ("JPEG", "CMYK")}[kind]
            )
            assert (img.format, img.mode) == want, name
    missing = synthetic_archive.MISSING_XMLS & set(rows["trainval.txt"])
    assert missing and all(not any(stored[n]["head_bbox"].float_list.value) for n in missing)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    raw = synthetic_archive.write_archive(tmp_path_factory.mktemp("raw"), 16, 4, seed=5)
    return raw, damage(raw)


def test_broken_samples_skipped_and_counted_by_reason(damaged, tmp_path):
    raw, cases = damaged
    prepared = tfds_prepare.prepare(tmp_path / "tfds", "raw-dir", raw_dir=raw)
    assert prepared.source == "raw-dir"
    assert prepared.skipped == {
        "unreadable_image": 2,
        "missing_image": 1,
        "missing_trimap": 1,
        "trimap_size_mismatch": 1,
        "bad_trimap_values": 1,
        "malformed_line": 1,
        "duplicate_name": 1,
    }
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


def _unreachable_urls():
    with socket.socket() as sock:  # a loopback port that nothing listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {part: f"http://127.0.0.1:{port}/data/{part}.tar.gz" for part in ("images", "annotations")}


def test_download_from_an_unreachable_host_fails_at_once_saying_what_to_do(tmp_path):
    urls = _unreachable_urls()
    with pytest.raises(tfds_prepare.DownloadUnreachableError) as error:
        tfds_prepare.prepare(tmp_path / "tfds", "download", download_urls=urls)
    message = str(error.value)
    for needed in (
        "--oxford-raw-dir",
        "data.oxford_raw_dir",
        urls["images"],
        urls["annotations"],
        "tar -xf images.tar.gz",
        "tar -xf annotations.tar.gz",
        "images/ and annotations/",
    ):
        assert needed in message, needed
    assert not (tmp_path / "tfds" / "downloads").exists(), "failed before any download started"


def test_the_archive_urls_are_the_builders():
    builder = tfds.builder("oxford_iiit_pet:4.0.0")
    urls = tfds_prepare.archive_urls(builder)
    assert set(urls) == {"images", "annotations"} and set(urls.values()) == set(builder.url_infos)
    assert urls["images"].endswith("/images.tar.gz") and urls["annotations"].endswith("/annotations.tar.gz")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_downloaded_archives_are_staged_like_extracted_ones(tmp_path):
    raw = synthetic_archive.write_archive(tmp_path / "raw", 30, 6, seed=0)
    # A GIF under a name the builder re-encodes, as six real files are: the builder alone fails on it.
    gif = raw / "images" / "Abyssinian_5.jpg"
    Image.open(gif).convert("P").save(gif, "GIF")
    served = tmp_path / "served" / "data"
    served.mkdir(parents=True)
    for part in ("images", "annotations"):
        with tarfile.open(served / f"{part}.tar.gz", "w:gz") as tar:
            tar.add(raw / part, arcname=part)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(tmp_path / "served"))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        urls = {part: f"http://127.0.0.1:{server.server_port}/data/{part}.tar.gz" for part in ("images", "annotations")}
        prepared = tfds_prepare.prepare(tmp_path / "tfds", "download", download_urls=urls)
    finally:
        server.shutdown()
        thread.join()
    assert prepared.source == "download" and prepared.num_examples == {"train": 30, "test": 6}
    assert prepared.repaired == {"image_gif_to_jpeg": 1} and prepared.skipped == {}
    stored = {ex["file_name"].bytes_list.value[0].decode(): ex for ex in _read(prepared.files["train"])}
    image, mask = _decoded(stored["Abyssinian_5.jpg"])
    assert image.shape == mask.shape[:2] + (3,)
