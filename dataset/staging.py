"""Checks every sample of an extracted archive and stages a clean copy for the TFDS builder."""

from __future__ import annotations

import collections
import logging
import pathlib
import shutil
import xml.etree.ElementTree as ET
from typing import Collection, Dict, List, Tuple

import numpy as np
from PIL import Image

from dataset import archive
from dataset.archive import LIST_FILES, NUM_BREEDS, NUM_SPECIES, PathLike

log = logging.getLogger(__name__)

# Encoded formats stored as they are: the TFDS Image feature keeps file bytes verbatim (it does not
# re-encode paths or file objects), and tf.io.decode_image(channels=3) reads JPEG (incl. grayscale
# and CMYK) and PNG (incl. RGBA, LA, palette, 16-bit) correctly (checked on TF 2.16). Anything else
# is re-encoded as RGB JPEG in staging: TF cannot decode TIFF or WebP at all, tf.io.decode_jpeg
# rejects BMP, and a GIF may be animated.
KEPT_IMAGE_FORMATS = ("JPEG", "PNG")


class BrokenSampleError(ValueError):
    """strict=True met a broken sample; the message names the file."""


class EmptySplitError(ValueError):
    """No usable sample is left in a split."""


class _Skip(Exception):
    def __init__(self, reason: str, path: PathLike, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.reason = reason


def stage(
    raw: PathLike, staging: PathLike, strict: bool = False, reencoded_names: Collection[str] = ()
) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Checks every listed sample of an extracted archive and writes a clean copy of it to staging.

    Good files are symlinked, odd-but-valid ones re-encoded, broken samples left out of the
    rewritten list files. Anything already in staging is deleted first. `reencoded_names` are the samples
    the builder itself re-encodes as JPEG (it takes only 1 or 3 channels there). Returns (skipped,
    repaired) counts by reason.
    """
    raw, staging = pathlib.Path(raw), pathlib.Path(staging)
    images, annotations = raw / "images", raw / "annotations"
    for needed in (images, annotations):
        if not needed.is_dir():
            raise FileNotFoundError(
                f"{needed} does not exist; the raw folder must hold the extracted images/ and annotations/ archives"
            )
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
                    for reason in _stage_sample(raw, staging, name, reencoded_names, strict):
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
            raise EmptySplitError(
                f"split {split!r} is empty: none of the {len(lines)} lines of {list_path} "
                f"names a usable sample (skipped so far: {dict(skipped) or 'none'})"
            )
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
    elif not (1 <= int(fields[1]) <= NUM_BREEDS and 1 <= int(fields[2]) <= NUM_SPECIES):
        bad = f"CLASS_ID (the breed) must be 1..{NUM_BREEDS} and SPECIES_ID 1..{NUM_SPECIES}: {line.strip()!r}"
    elif "/" in fields[0] or fields[0] in (".", ".."):
        bad = f"not a file name: {fields[0]!r}"
    if bad:
        raise _Skip("malformed_line", list_path, f"line {number}: {bad}")
    return fields[0]


def _stage_sample(raw: pathlib.Path, staging: pathlib.Path, name: str, corrupt_names, strict: bool) -> List[str]:
    """Validates one sample and puts it into staging; returns repair reasons; raises _Skip."""
    image_path, trimap_path, xml_path = (
        archive.image_path(raw, name),
        archive.trimap_path(raw, name),
        archive.xml_path(raw, name),
    )
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

    image_out = archive.image_path(staging, name)
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

    trimap_out = archive.trimap_path(staging, name)
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
            archive.xml_path(staging, name).symlink_to(xml_path.resolve())
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
