"""TfdsExampleGen under a real LocalDagRunner, read back by TFXIO and the real StatisticsGen."""

import json
import os

import pytest
import tensorflow_data_validation as tfdv
from tfx.components import StatisticsGen
from tfx.components.util import examples_utils, tfxio_utils
from tfx.orchestration import metadata, pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.types import artifact_utils
from tfx_bsl.tfxio import dataset_options

from components.example_gen import TfdsExampleGen
from dataset import synthetic
from report.artifacts import RunArtifacts


def test_raw_dir_source_needs_a_folder():
    with pytest.raises(ValueError, match="needs raw_dir"):
        TfdsExampleGen(data_dir="/tmp/unused", source="raw-dir")


def test_local_dag_runner_example_gen_then_statistics_gen(tmp_path):
    example_gen = TfdsExampleGen(
        data_dir=str(tmp_path / "tfds"),
        source="synthetic",
        synthetic_train_images=12,
        synthetic_test_images=6,
        synthetic_seed=1,
    )
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    metadata_config = metadata.sqlite_metadata_connection_config(str(tmp_path / "mlmd.sqlite"))
    # Not `tfx.v1`: importing it loads the Google Cloud extensions, ~15 s of a loaded 2-core box.
    LocalDagRunner().run(
        pipeline.Pipeline(
            pipeline_name="tfds_example_gen_test",
            pipeline_root=str(tmp_path / "root"),
            components=[example_gen, statistics_gen],
            metadata_connection_config=metadata_config,
        )
    )

    run = RunArtifacts(str(tmp_path / "mlmd.sqlite"), "tfds_example_gen_test")
    [examples] = run.outputs(example_gen.id, "examples")
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    assert examples_utils.get_payload_format_string(examples) == "FORMAT_TF_EXAMPLE"
    props = {
        k: examples.get_custom_property(k)
        for k in ("tfds_name", "tfds_version", "source", "num_train", "num_eval", "skipped", "span")
    }
    assert props == {
        "tfds_name": "oxford_iiit_pet",
        "tfds_version": "4.0.0",
        "source": "synthetic",
        "num_train": 12,
        "num_eval": 6,
        "skipped": "{}",
        "span": 0,
    }
    assert examples.get_custom_property("tfds_data_dir") == str(tmp_path / "tfds")
    assert examples.get_custom_property("input_fingerprint")
    assert json.loads(examples.get_custom_property("repaired")) == {}

    # TFXIO, as Transform/Trainer would read the artifact (uncompressed tfrecords included).
    for split, count in (("train", 12), ("eval", 6)):
        io = tfxio_utils.get_split_tfxio([examples], split, telemetry_descriptors=["test"])
        batches = list(
            io.RecordBatches(dataset_options.RecordBatchesOptions(batch_size=100, shuffle=False, num_epochs=1))
        )
        assert sum(b.num_rows for b in batches) == count
        assert {"image", "segmentation_mask", "label", "species"} <= set(batches[0].schema.names)

    [stats_artifact] = run.outputs(statistics_gen.id, "statistics")
    for split, count in (("train", 12), ("eval", 6)):
        stats = tfdv.load_stats_binary(os.path.join(stats_artifact.uri, f"Split-{split}", "FeatureStats.pb"))
        assert stats.datasets[0].num_examples == count


def test_every_example_gains_its_image_size_and_brightness(tmp_path):
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from components import example_gen, tfds_prepare
    from transform import features

    style = synthetic.SpanStyle(brightness=-30.0)  # any photos: a darker camera's here
    raw = synthetic.write_archive(tmp_path / "raw", 5, 2, seed=3, style=style)
    prepared = tfds_prepare.prepare(tmp_path / "tfds", "raw-dir", raw_dir=raw)
    [source] = prepared.files["train"]
    assert example_gen.add_image_statistics(source, str(tmp_path / "out")) == 5
    originals = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(source)]
    written = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(tmp_path / "out"))]
    for before, after in zip(originals, written):
        feature = after.features.feature
        added = {key: feature.pop(key) for key in features.IMAGE_STATISTICS_KEYS}
        assert after == before  # every other feature as the builder wrote it, in the same order
        name = before.features.feature[features.FILE_NAME_KEY].bytes_list.value[0].decode()
        with Image.open(raw / "images" / name) as image:
            width, height = image.size
            luma = np.asarray(image.convert("RGB"), np.float64) @ [0.2989, 0.5870, 0.1140]
        assert added[features.IMAGE_HEIGHT_KEY].int64_list.value == [height]
        assert added[features.IMAGE_WIDTH_KEY].int64_list.value == [width]
        # PIL's JPEG decoder upsamples chroma its own way: its mean luma differs from TF's by under a level.
        assert added[features.IMAGE_BRIGHTNESS_KEY].float_list.value[0] == pytest.approx(luma.mean(), abs=1.0)


def test_a_window_of_spans_on_a_non_local_filesystem(tmp_path, caplog):
    """ram:// stands for gs://: spans are listed and read through tf.io.gfile, and built ones are reused."""
    import logging

    import tensorflow as tf
    from tfx.types import standard_artifacts

    from components import example_gen

    remote = f"ram://{tmp_path.name}/pets"
    for span in (1, 2, 3):
        local = synthetic.write_archive(
            tmp_path / f"span-{span}", 4 + span, 2, seed=span, style=synthetic.SpanStyle(random_breeds=True)
        )
        for path in local.rglob("*"):
            if path.is_file():
                target = f"{remote}/span-{span}/{path.relative_to(local)}"
                tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
                tf.io.gfile.copy(str(path), target)

    def example_gen_run(name, **parameters):
        examples = standard_artifacts.Examples()
        examples.uri = str(tmp_path / name)
        example_gen.Executor().Do(
            {},
            {"examples": [examples]},
            {
                "data_dir": str(tmp_path / "tfds"),
                "raw_dir": f"{remote}/span-{{SPAN}}",
                "source": "raw-dir",
                "version": "4.*.*",
                "strict": 0,
                "synthetic_train_images": 0,
                "synthetic_test_images": 0,
                "synthetic_seed": 0,
                **parameters,
            },
        )
        return examples

    with caplog.at_level(logging.INFO, logger="components"):
        window = example_gen_run("window", span=-1, span_window=2)
    assert artifact_utils.decode_split_names(window.split_names) == ["train", "eval", "train_span_2"]
    assert (window.span, window.get_int_custom_property("span")) == (3, 3)
    assert json.loads(window.get_string_custom_property("spans")) == [{"span": 2, "train": 6}, {"span": 3, "train": 7}]
    assert (window.get_int_custom_property("num_train"), window.get_int_custom_property("num_eval")) == (7, 2)
    counts = {
        split: sum(
            1 for path in tf.io.gfile.glob(f"{window.uri}/Split-{split}/*") for _ in tf.data.TFRecordDataset(path)
        )
        for split in ("train", "eval", "train_span_2")
    }
    assert counts == {"train": 7, "eval": 2, "train_span_2": 6}
    assert "Reusing" not in caplog.text

    # A window of three reuses the two spans built above and builds only span 1; a window larger than the
    # spans there are reads them all.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="components"):
        wider = example_gen_run("wider", span=-1, span_window=5)
    assert json.loads(wider.get_string_custom_property("spans")) == [
        {"span": 1, "train": 5},
        {"span": 2, "train": 6},
        {"span": 3, "train": 7},
    ]
    assert caplog.text.count("Reusing oxford_iiit_pet") == 2 and caplog.text.count("Building oxford_iiit_pet") == 1
    # A pinned older span and its window: the spans up to it.
    pinned = example_gen_run("pinned", span=2, span_window=2)
    assert json.loads(pinned.get_string_custom_property("spans")) == [{"span": 1, "train": 5}, {"span": 2, "train": 6}]
