"""Test images and the records and raw folders made of them: encoded bytes, trimaps, TFDS-style tf.Examples."""

import io
import pathlib

import numpy as np
import tensorflow as tf
from PIL import Image

from transform import features


def trimap(height: int = 40, width: int = 56) -> np.ndarray:
    """uint8 [H, W] trimap with sharp edges: background 2, a border band 3 around a pet block 1."""
    mask = np.full((height, width), 2, np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 3
    mask[height // 4 + 2 : 3 * height // 4 - 2, width // 4 + 2 : 3 * width // 4 - 2] = 1
    return mask


def png(array: np.ndarray) -> bytes:
    return tf.io.encode_png(array if array.ndim == 3 else array[..., None]).numpy()


def jpeg(array: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(array).numpy()


def random_rgb(height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (48, 36), (10, 200, 30, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def encode(image, fmt: str, **kw) -> bytes:
    """A PIL image (or a uint8 array) encoded by PIL as `fmt`, e.g. "TIFF", which TensorFlow cannot write."""
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def raw_example(
    image: bytes = None,
    mask: bytes = None,
    label: int = 5,
    species: int = 1,
    file_name: bytes = b"Abyssinian_1.jpg",
    head_bbox=(0.1, 0.2, 0.5, 0.6),
    drop=(),
) -> bytes:
    """A serialized tf.Example laid out as the TFDS oxford_iiit_pet 4.0.0 builder writes it."""
    values = {
        features.RAW_IMAGE_KEY: bytes_feature(jpeg(random_rgb()) if image is None else image),
        features.RAW_MASK_KEY: bytes_feature(png(trimap()) if mask is None else mask),
        features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        features.SPECIES_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[species])),
        features.FILE_NAME_KEY: bytes_feature(file_name),
        features.HEAD_BBOX_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=list(head_bbox))),
    }
    kept = {key: value for key, value in values.items() if key not in drop}
    return tf.train.Example(features=tf.train.Features(feature=kept)).SerializeToString()


def bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


# ---------------------------------------------------------------- damaged raw folders (extracted archives)

# name -> (how to break it, expected skip reason)
BROKEN = {
    "truncated": "unreadable_image",
    "not_an_image": "unreadable_image",
    "missing_image": "missing_image",
    "missing_trimap": "missing_trimap",
    "size_mismatch": "trimap_size_mismatch",
    "bad_values": "bad_trimap_values",
}
ODD_VALID = ("png_as_jpg", "cmyk", "rgba_png", "grayscale", "tiff", "palette_trimap")


def damage(raw: pathlib.Path) -> dict:
    """Breaks or oddly re-encodes the first train samples; returns {case: sample name}."""
    names = [line.split()[0] for line in (raw / "annotations" / "trainval.txt").read_text().splitlines()]
    cases = dict(zip(list(BROKEN) + list(ODD_VALID), names))
    img = lambda n: raw / "images" / f"{n}.jpg"  # noqa: E731
    tri = lambda n: raw / "annotations" / "trimaps" / f"{n}.png"  # noqa: E731
    rgb = {case: Image.open(img(n)).convert("RGB") for case, n in cases.items()}
    img(cases["truncated"]).write_bytes(img(cases["truncated"]).read_bytes()[:1500])
    img(cases["not_an_image"]).write_text("<html>404 not found</html>")
    img(cases["missing_image"]).unlink()
    tri(cases["missing_trimap"]).unlink()
    Image.open(tri(cases["size_mismatch"])).resize((50, 40)).save(tri(cases["size_mismatch"]))
    values = np.asarray(Image.open(tri(cases["bad_values"]))).copy()
    values[0, :5] = 255
    Image.fromarray(values).save(tri(cases["bad_values"]))
    img(cases["png_as_jpg"]).write_bytes(encode(rgb["png_as_jpg"], "PNG"))
    img(cases["cmyk"]).write_bytes(encode(rgb["cmyk"].convert("CMYK"), "JPEG"))
    img(cases["rgba_png"]).write_bytes(encode(rgb["rgba_png"].convert("RGBA"), "PNG"))
    img(cases["grayscale"]).write_bytes(encode(rgb["grayscale"].convert("L"), "JPEG"))
    img(cases["tiff"]).write_bytes(encode(rgb["tiff"], "TIFF"))
    palette = Image.open(tri(cases["palette_trimap"])).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(tri(cases["palette_trimap"]))
    with open(raw / "annotations" / "trainval.txt", "a") as f:
        f.write("Abyssinian_999 1 1\n")  # 3 fields: malformed
        f.write(f"{names[-1]} 2 1 1\n")  # listed twice
    return cases
