"""Prepares `oxford_iiit_pet` with the real TFDS builder from synthetic, downloaded or extracted archives."""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import pathlib
import re
import shutil
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from components import synthetic_pets

log = logging.getLogger(__name__)

NAME = "oxford_iiit_pet"
SOURCES = ("synthetic", "download", "raw-dir")
# TFDS split -> the list file the builder reads it from.
LIST_FILES = {"train": "trainval.txt", "test": "test.txt"}
NUM_CLASSES, NUM_SPECIES = 37, 2
# Encoded formats stored as they are: the TFDS Image feature keeps file bytes verbatim (it does not
# re-encode paths or file objects), and tf.io.decode_image(channels=3) reads JPEG (incl. grayscale
# and CMYK) and PNG (incl. RGBA, LA, palette, 16-bit) correctly (checked on TF 2.16). Anything else
# is re-encoded as RGB JPEG in staging: TF cannot decode TIFF or WebP at all, tf.io.decode_jpeg
# rejects BMP, and a GIF may be animated.
KEPT_IMAGE_FORMATS = ("JPEG", "PNG")

PathLike = Union[str, os.PathLike]

# In a raw-dir path, `{SPAN}` stands for a span number (like TFX input patterns): data arrives as
# new folders, e.g. /data/pets/span-1, span-2, ... and a run reads the latest one.
SPAN_TOKEN = "{SPAN}"


class BrokenSampleError(ValueError):
    """strict=True met a broken sample; the message names the file."""


class EmptySplitError(ValueError):
    """No usable sample is left in a split."""


@dataclasses.dataclass
class PreparedDataset:
    """A prepared TFDS dataset: where its tfrecord files are and what was left out."""

    name: str
    version: str  # concrete, e.g. "4.0.0"
    data_dir: str  # TFDS data_dir root
    dataset_dir: str  # <data_dir>/<name>/<version>
    source: str
    file_patterns: Dict[str, str]  # split -> glob of plain tf.Example tfrecord files
    files: Dict[str, List[str]]
    num_examples: Dict[str, int]
    skipped: Dict[str, int]  # reason -> broken samples left out
    repaired: Dict[str, int]  # reason -> samples kept after normalisation in staging
    origin: Dict[str, object]  # what was prepared (source, raw dir, synthetic sizes)


def source_for(dataset: str, raw_dir: Optional[str]) -> str:
    """Maps `DataConfig.dataset` / `oxford_raw_dir` to a `prepare` source."""
    if dataset == "synthetic":
        return "synthetic"
    return "raw-dir" if raw_dir else "download"


def check_source(source: str, raw_dir: Optional[PathLike]) -> None:
    """Raises ValueError unless `prepare` can use this source."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "raw-dir" and not raw_dir:
        raise ValueError("source='raw-dir' needs raw_dir (the folder holding images/ and annotations/)")


def has_span(raw_dir: Optional[PathLike]) -> bool:
    return bool(raw_dir) and SPAN_TOKEN in os.fspath(raw_dir)


def find_spans(pattern: PathLike) -> Dict[int, str]:
    """Span number -> folder for every existing folder matching a `{SPAN}` pattern (digits)."""
    pattern = os.fspath(pattern)
    if pattern.count(SPAN_TOKEN) != 1:
        raise ValueError(f"{pattern}: a span pattern needs exactly one {SPAN_TOKEN}")
    parent, leaf = os.path.split(pattern)
    if SPAN_TOKEN not in leaf:
        raise ValueError(f"{pattern}: {SPAN_TOKEN} must be in the last path component")
    regex = re.compile(re.escape(leaf).replace(re.escape(SPAN_TOKEN), r"(\d+)") + r"\Z")
    spans: Dict[int, str] = {}
    for entry in (sorted(os.listdir(parent)) if os.path.isdir(parent) else []):
        match = regex.match(entry)
        if match and os.path.isdir(os.path.join(parent, entry)):
            span = int(match.group(1))
            if span in spans:  # span-1 and span-01: which one is meant is a guess, so refuse
                raise ValueError(f"{pattern}: span {span} matches both {spans[span]} and {entry}")
            spans[span] = os.path.join(parent, entry)
    return spans


def resolve_span(pattern: PathLike, span: Optional[int] = None) -> Tuple[int, str]:
    """(span, folder) for the requested span, or the latest one when span is None or negative."""
    spans = find_spans(pattern)
    if not spans:
        raise FileNotFoundError(f"no folder matches {os.fspath(pattern)} ({SPAN_TOKEN} = digits)")
    if span is None or span < 0:
        span = max(spans)
    elif span not in spans:
        raise FileNotFoundError(f"span {span} of {os.fspath(pattern)} does not exist; found {sorted(spans)}")
    return span, spans[span]


def span_data_dir(data_dir: PathLike, span: int) -> str:
    """Each span is its own TFDS dataset (same name and version), so it needs its own data_dir."""
    return os.path.join(os.fspath(data_dir), f"span-{span}")


def prepare(data_dir: PathLike, source: str, raw_dir: Optional[PathLike] = None,
            synthetic: Tuple[int, int, int] = (480, 120, 0), version: str = "4.*.*",
            strict: bool = False) -> PreparedDataset:
    """Builds `oxford_iiit_pet` into data_dir unless it is already there; returns where it is.

    synthetic: (train images, test images, seed), used when source == "synthetic".
    """
    import tensorflow_datasets as tfds

    check_source(source, raw_dir)
    data_dir = pathlib.Path(data_dir).resolve()
    work = data_dir / "petseg_sources"
    origin: Dict[str, object] = {"source": source}
    if source == "raw-dir":
        origin["raw_dir"] = str(pathlib.Path(raw_dir).resolve())
    elif source == "synthetic":
        origin["synthetic"] = [int(v) for v in synthetic]
        origin["generator"] = synthetic_pets.GENERATOR_VERSION

    builder = tfds.builder(f"{NAME}:{version}", data_dir=str(data_dir))
    record = work / f"{NAME}-{builder.version}.json"
    if builder.is_prepared():
        return _reuse(builder, data_dir, record, origin)

    skipped: Dict[str, int] = {}
    repaired: Dict[str, int] = {}
    if source == "download":
        log.info("Downloading and preparing %s %s into %s", NAME, builder.version, data_dir)
        try:
            builder.download_and_prepare()
        except Exception as exc:
            raise RuntimeError(f"downloading {NAME} failed ({exc}); without internet, extract the "
                               "images and annotations archives and use source='raw-dir'") from exc
    else:
        if source == "synthetic":
            train, test, seed = (int(v) for v in synthetic)
            raw = synthetic_pets.write_archive(work / f"synthetic_raw-{train}-{test}-{seed}", train, test, seed)
        else:
            raw = pathlib.Path(raw_dir).resolve()
        staging = work / "staging"
        skipped, repaired = stage(raw, staging, strict=strict)
        _build_offline(builder, staging)
        builder = tfds.builder(f"{NAME}:{builder.version}", data_dir=str(data_dir))  # plain TFDS reads it back
        # The builder has read everything; the staging copy is symlinks and a few re-encodes.
        shutil.rmtree(staging, ignore_errors=True)
    prepared = _describe(builder, data_dir, origin, skipped, repaired)
    work.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(dataclasses.asdict(prepared), indent=2, sort_keys=True))
    log.info("Prepared %s %s: %s examples, skipped %s, repaired %s", NAME, prepared.version,
             prepared.num_examples, skipped or "none", repaired or "none")
    return prepared


def _reuse(builder, data_dir: pathlib.Path, record: pathlib.Path, origin: Dict[str, object]) -> PreparedDataset:
    # Rebuilding would need a new TFDS version; a dataset from another source must not be mistaken
    # for the one asked for, so a mismatch is an error rather than a silent reuse.
    if record.exists():
        previous = json.loads(record.read_text())
        if previous["origin"] != origin:
            raise ValueError(f"{builder.data_dir} already holds {NAME} prepared from {previous['origin']}, "
                             f"not {origin}; use another data_dir or delete that one")
        skipped, repaired = previous["skipped"], previous["repaired"]
    elif origin["source"] == "download":
        skipped, repaired = {}, {}  # prepared by plain TFDS elsewhere: the real dataset
    else:
        raise ValueError(f"{builder.data_dir} holds a {NAME} not prepared by this module (no {record}); "
                         f"it cannot be the {origin['source']} data asked for; use another data_dir")
    log.info("Reusing %s %s in %s (skipped %s)", NAME, builder.version, builder.data_dir, skipped or "none")
    return _describe(builder, data_dir, origin, skipped, repaired)


def _describe(builder, data_dir: pathlib.Path, origin, skipped, repaired) -> PreparedDataset:
    splits = builder.info.splits
    files = {s: sorted(os.fspath(p) for p in splits[s].filepaths) for s in LIST_FILES}
    return PreparedDataset(
        name=NAME, version=str(builder.version), data_dir=os.fspath(data_dir),
        dataset_dir=os.fspath(builder.data_dir), source=str(origin["source"]),
        file_patterns={s: os.path.join(builder.data_dir, f"{NAME}-{s}.{builder.info.file_format.value}*")
                       for s in LIST_FILES},
        files=files, num_examples={s: int(splits[s].num_examples) for s in LIST_FILES},
        skipped=dict(skipped), repaired=dict(repaired), origin=dict(origin))


def _build_offline(builder, archive_root: pathlib.Path) -> None:
    """Runs the real builder's example generation and writers on an extracted archive folder."""
    log.info("Building %s %s from %s", NAME, builder.version, archive_root)
    extracted = _extracted_builder_class()(archive_root, data_dir=builder.data_dir_root, version=str(builder.version))
    extracted.download_and_prepare()


@functools.lru_cache(maxsize=None)
def _extracted_builder_class():
    """The installed `oxford_iiit_pet` builder, reading its two archives from one extracted folder.

    Only where the archives come from differs: features, example generation, file format, name and
    version are the real builder's, so plain `tfds.builder("oxford_iiit_pet")` reads what it writes.
    """
    from tensorflow_datasets.datasets.oxford_iiit_pet import oxford_iiit_pet_dataset_builder as real
    import tensorflow_datasets as tfds

    class ExtractedOxfordPets(real.Builder, skip_registration=True):
        name = NAME
        pkg_dir_path = real.Builder._get_pkg_dir_path()  # the real dataset's README and citation

        def __init__(self, archive_root: pathlib.Path, **kwargs):
            self._archive_root = pathlib.Path(archive_root)
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            # What the real builder derives from download_and_extract(): <root>/images and <root>/annotations.
            images, annotations = self._archive_root / "images", self._archive_root / "annotations"
            return [tfds.core.SplitGenerator(name=split, gen_kwargs={
                "images_dir_path": os.fspath(images), "annotations_dir_path": os.fspath(annotations),
                "images_list_file": os.fspath(annotations / list_name)}) for split, list_name in LIST_FILES.items()]

        # TFDS prints these to stdout for downloads a user may want to cancel; nothing is downloaded here.
        def _log_download_bytes(self) -> None:
            log.info("Preparing %s %s in %s", NAME, self.version, self.data_dir)

        def _log_download_done(self) -> None:
            log.info("Prepared %s %s in %s", NAME, self.version, self.data_dir)

    return ExtractedOxfordPets


# ---------------------------------------------------------------- validation and staging


class _Skip(Exception):
    def __init__(self, reason: str, path: PathLike, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.reason = reason


def stage(raw: PathLike, staging: PathLike, strict: bool = False) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Checks every listed sample of an extracted archive and writes a clean copy of it to staging.

    Good files are symlinked, odd-but-valid ones re-encoded, broken samples left out of the
    rewritten list files. Anything already in staging is deleted first. Returns (skipped, repaired) counts by reason.
    """
    from tensorflow_datasets.datasets.oxford_iiit_pet import oxford_iiit_pet_dataset_builder as real

    raw, staging = pathlib.Path(raw), pathlib.Path(staging)
    images, annotations = raw / "images", raw / "annotations"
    for needed in (images, annotations):
        if not needed.is_dir():
            raise FileNotFoundError(f"{needed} does not exist; the raw folder must hold the extracted "
                                    "images/ and annotations/ archives")
    shutil.rmtree(staging, ignore_errors=True)  # a leftover from an interrupted run
    for sub in ("images", "annotations/trimaps", "annotations/xmls"):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    skipped: Dict[str, int] = collections.Counter()
    repaired: Dict[str, int] = collections.Counter()
    staged: set = set()
    for split, list_name in LIST_FILES.items():
        list_path = annotations / list_name
        if not list_path.is_file():
            raise EmptySplitError(f"split {split!r} is empty: {list_path} does not exist")
        kept, seen = [], set()
        lines = list_path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            if number % 1000 == 0:  # full decodes of the real 7,349 pairs take a minute or two
                log.info("Checked %d/%d lines of %s", number, len(lines), list_path)
            try:
                name = _parse_line(line, list_path, number)
                if name in seen:
                    raise _Skip("duplicate_name", list_path, f"line {number}: {name} listed twice")
                seen.add(name)
                if name not in staged:
                    for reason in _stage_sample(raw, staging, name, real._CORRUPT_SAMPLES, strict):
                        repaired[reason] += 1
                    staged.add(name)
            except _Skip as skip:
                if strict:
                    raise BrokenSampleError(f"broken sample (strict=True): {skip}") from None
                log.warning("Skipping %s", skip)
                skipped[skip.reason] += 1
                continue
            kept.append(line.strip())
        if not kept:
            raise EmptySplitError(f"split {split!r} is empty: none of the {len(lines)} lines of {list_path} "
                                  f"names a usable sample (skipped so far: {dict(skipped) or 'none'})")
        (staging / "annotations" / list_name).write_text("\n".join(kept) + "\n")
        log.info("Split %s: %d samples kept from %s", split, len(kept), list_path)
    return dict(skipped), dict(repaired)


def _parse_line(line: str, list_path: pathlib.Path, number: int) -> str:
    # Same split as the builder's `line.strip().split(" ")`, which any other shape would crash.
    fields = line.strip().split(" ")
    bad = None
    if len(fields) != 4:
        bad = f"expected 'NAME CLASS_ID SPECIES_ID BREED_ID', got {line.strip()!r}"
    elif not all(f.isdigit() for f in fields[1:]):
        bad = f"ids must be integers: {line.strip()!r}"
    elif not (1 <= int(fields[1]) <= NUM_CLASSES and 1 <= int(fields[2]) <= NUM_SPECIES):
        bad = f"class id must be 1..{NUM_CLASSES} and species id 1..{NUM_SPECIES}: {line.strip()!r}"
    elif "/" in fields[0] or fields[0] in (".", ".."):
        bad = f"not a file name: {fields[0]!r}"
    if bad:
        raise _Skip("malformed_line", list_path, f"line {number}: {bad}")
    return fields[0]


def _stage_sample(raw: pathlib.Path, staging: pathlib.Path, name: str, corrupt_names, strict: bool) -> List[str]:
    """Validates one sample and puts it into staging; returns repair reasons; raises _Skip."""
    image_path = raw / "images" / f"{name}.jpg"
    trimap_path = raw / "annotations" / "trimaps" / f"{name}.png"
    xml_path = raw / "annotations" / "xmls" / f"{name}.xml"
    repairs: List[str] = []

    image = _open(image_path, "image")
    trimap = _open(trimap_path, "trimap")
    if trimap.size != image.size:
        raise _Skip("trimap_size_mismatch", trimap_path, f"trimap is {trimap.size}, image is {image.size}")
    values = np.asarray(trimap)
    if values.ndim != 2:
        raise _Skip("bad_trimap_values", trimap_path, f"trimap has {values.shape[-1]} channels, expected 1")
    unexpected = sorted(set(np.unique(values).tolist()) - {1, 2, 3})
    if unexpected:
        raise _Skip("bad_trimap_values", trimap_path, f"values {unexpected[:5]} outside {{1, 2, 3}}")

    image_out = staging / "images" / f"{name}.jpg"
    if image.format not in KEPT_IMAGE_FORMATS:
        image.convert("RGB").save(image_out, "JPEG", quality=95)
        repairs.append(f"image_{image.format or 'unknown'}_to_jpeg".lower())
    elif name in corrupt_names and image.mode not in ("RGB", "L"):
        # The builder re-encodes these names with tf.io.encode_jpeg, which only takes 1 or 3 channels
        # (it strips a 4th, not a 2nd); hand it RGB.
        image.convert("RGB").save(image_out, "JPEG", quality=95)
        repairs.append("image_mode_to_rgb")
    else:
        image_out.symlink_to(image_path.resolve())

    trimap_out = staging / "annotations" / "trimaps" / f"{name}.png"
    if trimap.format == "PNG" and trimap.mode == "L":
        trimap_out.symlink_to(trimap_path.resolve())
    else:
        # Decoded with channels=1, a palette PNG yields gray levels and a 16-bit PNG is rescaled to
        # 8 bits, so values 1/2/3 would not survive: store plain 8-bit grayscale.
        Image.fromarray(values.astype(np.uint8)).save(trimap_out, "PNG")
        repairs.append("trimap_to_8bit_png")

    if xml_path.exists():
        try:
            _check_xml(xml_path)
            (staging / "annotations" / "xmls" / f"{name}.xml").symlink_to(xml_path.resolve())
        except Exception as exc:  # any parse failure would abort the whole builder run
            if strict:
                raise _Skip("bad_xml", xml_path, str(exc)) from None
            # The pair itself is fine; without the XML the builder stores an empty head box, as it
            # does for every test image.
            log.warning("Dropping unreadable head-box XML %s (%s); the sample is kept", xml_path, exc)
            repairs.append("bad_xml_dropped")
    return repairs


def _open(path: pathlib.Path, what: str) -> Image.Image:
    if not path.is_file():
        raise _Skip(f"missing_{what}", path, "file not found")
    try:
        img = Image.open(path)
        img.load()  # decodes fully: truncated or non-image bytes fail here, not in the builder
        return img
    except Exception as exc:
        raise _Skip(f"unreadable_{what}", path, f"{type(exc).__name__}: {exc}") from None


def _check_xml(path: pathlib.Path) -> None:
    # Reads exactly what the builder's _get_head_bbox reads.
    root = ET.parse(path).getroot()
    size = root.find("size")
    for key in ("width", "height"):
        if float(size.find(key).text) <= 0:
            raise ValueError(f"size/{key} must be positive")
    box = root.find("object").find("bndbox")
    for key in ("xmin", "ymin", "xmax", "ymax"):
        float(box.find(key).text)
