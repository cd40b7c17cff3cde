"""Deterministic synthetic pets written in the real Oxford-IIIT Pet archive layout."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import pathlib
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from dataset import archive

log = logging.getLogger(__name__)

# The small default archive: six real breeds, both species, small photos; it trains in minutes.
QUICK_BREEDS: Tuple[archive.Breed, ...] = tuple(
    archive.breed(name) for name in ("Abyssinian", "Bengal", "Persian", "beagle", "pug", "samoyed")
)
MIN_SIDE, MAX_SIDE = 100, 260

# Like the real archive (`like_oxford=True`): all 37 breeds, and photo sizes spread like the real ones:
# most are 500 px on the long side, some smaller, a few larger, at the usual camera aspect ratios in
# both orientations; the short side spans about 100-500 px.
OXFORD_LONG_SIDE, OXFORD_MIN_SIDE = 500, 100
OXFORD_ASPECTS = (4 / 3, 3 / 2, 1.0, 5 / 4, 16 / 9, 2.0)
OXFORD_ASPECT_WEIGHTS = (0.45, 0.2, 0.1, 0.1, 0.1, 0.05)

# How the real archive stores its odd images, all of them named `.jpg`, by sample name. Same names, so
# the TFDS builder re-encodes those it lists as corrupt (components.internals.tfds_reencoded_names)
# exactly as it does the real ones, and staging repairs the rest as it would the real ones.
ODD_IMAGES: Dict[str, str] = {
    "Abyssinian_5": "rgba_png",
    "Egyptian_Mau_14": "rgba_png",
    "Egyptian_Mau_186": "rgba_png",
    "Egyptian_Mau_156": "png",
    "Abyssinian_34": "gif",
    "Egyptian_Mau_139": "gif",
    "Egyptian_Mau_145": "gif",
    "Egyptian_Mau_167": "gif",
    "Egyptian_Mau_177": "gif",
    "Egyptian_Mau_191": "gif",
    "staffordshire_bull_terrier_2": "grayscale_jpeg",
    "staffordshire_bull_terrier_22": "grayscale_jpeg",
    # libjpeg warns "Corrupt JPEG data: N extraneous bytes before marker 0xd9" on these and decodes them.
    "beagle_116": "corrupt_jpeg",
    "chihuahua_121": "corrupt_jpeg",
    # No real image is CMYK, but photos from other sources often are: a rehearsal must decode them too.
    "Bombay_3": "cmyk_jpeg",
    "boxer_7": "cmyk_jpeg",
}
# Real trainval samples without a head-box XML: the builder stores an empty box for them, as for test.
MISSING_XMLS = frozenset(
    {
        "Abyssinian_104",
        "Bengal_111",
        "Bengal_175",
        "Egyptian_Mau_14",
        "Egyptian_Mau_156",
        "Egyptian_Mau_186",
        "Ragdoll_199",
        "saint_bernard_15",
        "samoyed_10",
    }
)

# Trimap values, as in the real annotations/trimaps PNGs.
PET, BACKGROUND, BORDER = 1, 2, 3

# Bump whenever the pictures drawn change: data prepared, and pipeline runs cached, with another
# version are then rebuilt or refused instead of silently reused.
GENERATOR_VERSION = 3

# Fewer samples are drawn in this process: starting worker processes costs more than it saves.
_PARALLEL_FROM = 256
# The random stream that draws breeds: above any sample index, which seeds a sample's own stream.
_BREEDS_STREAM = 1 << 32


@dataclasses.dataclass(frozen=True)
class SpanStyle:
    """Which pets a span holds and how they are photographed; the defaults draw the usual archive.

    A week of real data is a random draw: `random_breeds` gives each pet a breed (hence a species) at
    random with the seed, so two spans' mixes differ as two weeks' do; otherwise breeds go round-robin
    and every archive of a size has the same mix. The rest change a span the way the world can: one
    species only, a brighter camera, larger photos.
    """

    random_breeds: bool = False
    species: Optional[int] = None  # archive.CAT or archive.DOG: that species' breeds only
    brightness: float = 0.0  # added to every pixel value (0..255) before clipping
    scale: float = 1.0  # every photo's sides multiplied

    def breeds(self, like_oxford: bool) -> Tuple[archive.Breed, ...]:
        breeds = archive.BREEDS if like_oxford else QUICK_BREEDS
        return tuple(b for b in breeds if self.species in (None, b.species_id))


@dataclasses.dataclass
class SyntheticPet:
    """One rendered sample: RGB image, trimap and head box (xmin, ymin, xmax, ymax, pixels)."""

    image: np.ndarray
    trimap: np.ndarray
    head_box: Tuple[int, int, int, int]


def _colour(rng: np.random.Generator) -> np.ndarray:
    # Pet, texture and clutter all draw from this one distribution, so colour alone says nothing.
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _texture(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """A flat, striped or spotted pattern over rows ys x columns xs: (where the second colour shows, or
    None for flat; that colour). Used for pets and distractors alike."""
    kind = rng.integers(0, 3)
    if kind == 0:
        return None, np.zeros(3, np.float32)
    other = _colour(rng)
    if kind == 1:
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        phase = xs[None, :] * np.float32(math.cos(angle) / period) + ys[:, None] * np.float32(math.sin(angle) / period)
        on = (phase - np.floor(phase)) < rng.uniform(0.3, 0.6)
    else:
        layer = Image.new("L", (len(xs), len(ys)), 0)
        draw = ImageDraw.Draw(layer)
        for _ in range(int(rng.integers(8, 30))):
            cx, cy, r = rng.uniform(0, len(xs)), rng.uniform(0, len(ys)), rng.uniform(2, 9)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        on = np.asarray(layer) > 0
    return on, other


def _paint(rng: np.random.Generator, img: np.ndarray, ys: np.ndarray, xs: np.ndarray, layer: Image.Image) -> None:
    """Fills the drawn pixels of `layer` with a random texture, computed over their bounding box only."""
    box = layer.getbbox()
    if box is None:
        return
    x0, y0, x1, y1 = box
    region, where = img[y0:y1, x0:x1], np.asarray(layer.crop(box)) > 0
    base = _colour(rng)
    on, other = _texture(rng, ys[y0:y1], xs[x0:x1])
    np.copyto(region, base, where=where[..., None])
    if on is not None:
        np.copyto(region, other, where=(where & on)[..., None])


def _background(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    h, w = len(ys), len(xs)
    c1, c2 = _colour(rng), _colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    # A linear gradient from c1 to c2 across the frame: t runs 0..1 between its extreme corners.
    dx, dy = math.cos(angle), math.sin(angle)
    low = min(0.0, (w - 1) * dx) + min(0.0, (h - 1) * dy)
    span = max(abs((w - 1) * dx) + abs((h - 1) * dy), 1e-6)
    t = xs[None, :] * np.float32(dx / span) + (ys[:, None] * np.float32(dy / span) - np.float32(low / span))
    img = t[..., None] * (c2 - c1) + c1
    if rng.random() < 0.6:
        on, other = _texture(rng, ys, xs)
        if on is not None:
            np.copyto(img, other, where=on[..., None])
    # Distractors wear the pets' colours and textures but are angular (boxes, triangles, bars):
    # only shape separates a pet from clutter. Round distractors made the quick profile's small
    # model need far more than a few minutes of CPU training.
    for _ in range(int(rng.integers(2, 6))):
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sx, sy = rng.uniform(0.05, 0.25) * w, rng.uniform(0.05, 0.25) * h
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle([cx - sx, cy - sy, cx + sx, cy + sy], fill=255)
        elif kind == 1:
            draw.polygon([(cx - sx, cy + sy), (cx + sx, cy + sy), (cx + rng.uniform(-sx, sx), cy - sy)], fill=255)
        else:
            draw.line([cx - sx, cy - sy, cx + sx, cy + sy], fill=255, width=int(rng.integers(3, 12)))
        _paint(rng, img, ys, xs, layer)
    return img


def _pet_mask(rng: np.random.Generator, h: int, w: int, species: int) -> Tuple[Image.Image, Tuple[int, ...]]:
    """Ellipse body + head disc + ears (pointed for cats, hanging for dogs), drawn 255 on a 0 "L" layer."""
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    a, b = rng.uniform(0.26, 0.38) * w, rng.uniform(0.17, 0.27) * h
    r = rng.uniform(0.55, 0.8) * min(a, b) + 0.05 * min(h, w)
    facing = 1 if rng.random() < 0.5 else -1
    # Keep body and head inside the frame so every pet is whole, like most real photos.
    cx = rng.uniform(a + 2, w - a - 2)
    cy = rng.uniform(max(b, 2.2 * r) + 4, h - b - 2)
    hx = float(np.clip(cx + facing * a * rng.uniform(0.55, 0.85), r + 2, w - r - 2))
    hy = cy - b * rng.uniform(0.3, 0.9)
    draw.ellipse([cx - a, cy - b, cx + a, cy + b], fill=255)
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=255)
    top = hy - r
    if species == 1:
        ear_h, ear_w = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.45, 0.6)
        for side in (-1, 1):
            base = hx + side * r * 0.5
            draw.polygon(
                [
                    (base - ear_w / 2, hy - r * 0.55),
                    (base + ear_w / 2, hy - r * 0.55),
                    (base + side * ear_w * 0.3, hy - r - ear_h),
                ],
                fill=255,
            )
        top = hy - r - ear_h
    else:
        ear_w, ear_h = r * rng.uniform(0.35, 0.5), r * rng.uniform(1.0, 1.4)
        for side in (-1, 1):
            ex = hx + side * r * 0.95
            draw.ellipse([ex - ear_w, hy - r * 0.4, ex + ear_w, hy - r * 0.4 + 2 * ear_h], fill=255)
        r_x = r * 0.95 + ear_w
        box = (hx - r_x, hy - r, hx + r_x, hy - r * 0.4 + 2 * ear_h)
        return layer, _clip_box(box, w, h)
    return layer, _clip_box((hx - r, top, hx + r, hy + r), w, h)


def _clip_box(box: Sequence[float], w: int, h: int) -> Tuple[int, int, int, int]:
    # VOC boxes are 1-based inclusive pixel coordinates.
    x0, y0, x1, y1 = box
    return (
        int(np.clip(x0, 0, w - 1)) + 1,
        int(np.clip(y0, 0, h - 1)) + 1,
        int(np.clip(x1, 0, w - 1)) + 1,
        int(np.clip(y1, 0, h - 1)) + 1,
    )


def _any_within(mask: np.ndarray, radius: int) -> np.ndarray:
    """True where `mask` is True anywhere in the (2 radius + 1)^2 square around a pixel, clipped at the edges.

    PIL's MaxFilter computes the same, but costs O(radius^2) per pixel (a third of a second for one
    500x375 photo); two running sums, one per axis, cost O(1).
    """
    out = mask
    for axis in (0, 1):
        n = out.shape[axis]
        sums = np.concatenate(
            [np.zeros_like(np.take(out, [0], axis=axis), dtype=np.int32), np.cumsum(out, axis=axis, dtype=np.int32)],
            axis=axis,
        )
        index = np.arange(n)
        out = (
            np.take(sums, np.minimum(index + radius + 1, n), axis=axis)
            - np.take(sums, np.maximum(index - radius, 0), axis=axis)
        ) > 0
    return out


def trimap_from_mask(mask: np.ndarray, band: int) -> np.ndarray:
    """Pet 1 / background 2 / border 3, the border straddling the outline like real trimaps."""
    trimap = np.full(mask.shape, BACKGROUND, np.uint8)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return trimap
    # Only the pet's box, widened by more than the band, can change; beyond it all stays background.
    h, w = mask.shape
    box = np.s_[
        max(rows[0] - band - 1, 0) : min(rows[-1] + band + 2, h),
        max(cols[0] - band - 1, 0) : min(cols[-1] + band + 2, w),
    ]
    crop = mask[box]
    grown, shrunk = _any_within(crop, band), ~_any_within(~crop, band)
    trimap[box][grown & ~shrunk] = BORDER
    trimap[box][shrunk] = PET
    return trimap


def _oxford_size(rng: np.random.Generator) -> Tuple[int, int]:
    """(height, width) drawn like the real photos' sizes."""
    draw = rng.random()
    if draw < 0.75:
        long_side = OXFORD_LONG_SIDE
    elif draw < 0.99:
        long_side = int(rng.integers(2 * OXFORD_MIN_SIDE, OXFORD_LONG_SIDE))
    else:
        long_side = int(rng.integers(OXFORD_LONG_SIDE, 2 * OXFORD_LONG_SIDE))
    aspect = OXFORD_ASPECTS[rng.choice(len(OXFORD_ASPECTS), p=OXFORD_ASPECT_WEIGHTS)]
    short_side = max(OXFORD_MIN_SIDE, round(long_side / aspect))
    return (short_side, long_side) if rng.random() < 0.65 else (long_side, short_side)


def render(
    rng: np.random.Generator, species: int, like_oxford: bool = False, style: SpanStyle = SpanStyle()
) -> SyntheticPet:
    """One synthetic photo of a cat (species 1) or dog (species 2), sized like the real set's if `like_oxford`."""
    if like_oxford:
        h, w = _oxford_size(rng)
    else:
        h, w = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    h, w = max(1, round(h * style.scale)), max(1, round(w * style.scale))
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    img = _background(rng, ys, xs)
    layer, head_box = _pet_mask(rng, h, w, species)
    _paint(rng, img, ys, xs, layer)
    # Sensor-like grain, one value per pixel for all three channels (a third of the cost of per-channel).
    img += (6 * rng.standard_normal(size=(h, w), dtype=np.float32))[..., None] + np.float32(style.brightness)
    # The band scales with the photo, as in real trimaps, so it survives the resize to the model's
    # input (a fixed 1-2 px band is under one pixel at 96x96 and unlearnable there).
    trimap = trimap_from_mask(np.asarray(layer) > 0, band=max(1, round(min(h, w) * rng.uniform(0.012, 0.022))))
    return SyntheticPet(np.clip(img, 0, 255, out=img).astype(np.uint8), trimap, head_box)


def _xml(name: str, pet: SyntheticPet, species: int) -> str:
    h, w = pet.trimap.shape
    xmin, ymin, xmax, ymax = pet.head_box
    return (
        f"<annotation><folder>OXIIIT</folder><filename>{name}.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        f"<segmented>0</segmented><object><name>{('cat', 'dog')[species - 1]}</name>"
        f"<pose>Frontal</pose><truncated>0</truncated><occluded>0</occluded>"
        f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
        f"</bndbox><difficult>0</difficult></object></annotation>\n"
    )


def sample_names(
    train_images: int, test_images: int, like_oxford: bool = False, seed: int = 0, style: SpanStyle = SpanStyle()
) -> Tuple[List[Tuple[str, int, int, int]], ...]:
    """(NAME, CLASS_ID, SPECIES_ID, BREED_ID) rows of trainval.txt and test.txt.

    Breeds go round-robin, or are drawn at random with `seed` when `style.random_breeds`. Samples are
    numbered per breed from 1, trainval first, as `<breed>_<n>` like the real file names.
    """
    breeds = style.breeds(like_oxford)
    if not breeds:
        raise ValueError(f"no breed of species {style.species} to draw")
    total = train_images + test_images
    if style.random_breeds:
        picks = np.random.default_rng([seed, _BREEDS_STREAM]).integers(0, len(breeds), size=total)
    else:
        picks = np.arange(total) % len(breeds)
    rows, per_breed = [], {}
    for i in range(total):
        breed = breeds[picks[i]]
        per_breed[breed.name] = per_breed.get(breed.name, 0) + 1
        rows.append((f"{breed.name}_{per_breed[breed.name]}", breed.class_id, breed.species_id, breed.breed_id))
    return rows[:train_images], rows[train_images:]


def encode_image(image: np.ndarray, kind: str = "jpeg", rng: np.random.Generator = None) -> bytes:
    """The bytes of an RGB photo stored as `kind`: "jpeg" or one of the ODD_IMAGES kinds."""
    rgb = Image.fromarray(image)
    buffer = io.BytesIO()
    if kind in ("jpeg", "corrupt_jpeg"):
        rgb.save(buffer, "JPEG", quality=90)
    elif kind == "grayscale_jpeg":
        rgb.convert("L").save(buffer, "JPEG", quality=90)
    elif kind == "cmyk_jpeg":
        rgb.convert("CMYK").save(buffer, "JPEG", quality=90)
    elif kind == "png":
        rgb.save(buffer, "PNG")
    elif kind == "rgba_png":
        # An opaque pet on a partly transparent photo, as a cut-out would be.
        alpha = np.full(image.shape[:2], 255, np.uint8)
        alpha[: image.shape[0] // 3] = 128
        Image.fromarray(np.dstack([image, alpha])).save(buffer, "PNG")
    elif kind == "gif":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, "GIF")
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    data = buffer.getvalue()
    if kind == "corrupt_jpeg":
        # Stray bytes before the end-of-image marker: readers warn and decode the picture all the same.
        # No 0xFF among them: that would start a marker, which libjpeg rejects instead of skipping.
        rng = rng or np.random.default_rng(0)
        data = data[:-2] + rng.integers(0, 255, int(rng.integers(60, 300)), dtype=np.uint8).tobytes() + data[-2:]
    return data


def write_archive(
    root: Union[str, pathlib.Path],
    train_images: int,
    test_images: int,
    seed: int = 0,
    like_oxford: bool = False,
    processes: int = 0,
    style: SpanStyle = SpanStyle(),
) -> pathlib.Path:
    """Writes images/, annotations/{trimaps,xmls}/ and trainval.txt/test.txt under root; returns root.

    like_oxford: all 37 real breeds, photo sizes like the real set's, and the real set's odd image files
    (ODD_IMAGES) wherever their names are drawn; else six breeds of small photos, all RGB JPEG.
    processes: processes drawing in parallel; 0 = one per CPU core this process may use.
    style: which breeds and what camera (SpanStyle); the default is the usual archive.
    The same (train_images, test_images, seed, like_oxford, style) always writes the same bytes.
    """
    root = pathlib.Path(root)
    for d in ("images", "annotations/trimaps", "annotations/xmls"):
        (root / d).mkdir(parents=True, exist_ok=True)
    train_rows, test_rows = sample_names(train_images, test_images, like_oxford, seed, style)
    processes = processes or len(os.sched_getaffinity(0))
    if processes > 1 and train_images + test_images >= _PARALLEL_FROM:
        _draw_in_processes(root, train_images, test_images, seed, like_oxford, processes, style)
    else:
        _write_samples(root, train_images, test_images, seed, like_oxford, style)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        archive.list_path(root, split).write_text("".join(f"{' '.join(map(str, r))}\n" for r in rows))
    log.info(
        "Wrote %d train + %d test synthetic pets (seed %d%s) to %s",
        train_images,
        test_images,
        seed,
        ", like the Oxford set" if like_oxford else "",
        root,
    )
    return root


def _draw_in_processes(
    root: pathlib.Path,
    train_images: int,
    test_images: int,
    seed: int,
    like_oxford: bool,
    processes: int,
    style: SpanStyle,
) -> None:
    # Fresh interpreters running this module, not multiprocessing: fork would copy the threads of a
    # TensorFlow process mid-flight, and spawn re-imports the caller's __main__, which hangs or recurses
    # when a script or notebook calls this without a `__main__` guard.
    package_root = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                __name__,
                str(root),
                str(train_images),
                str(test_images),
                str(seed),
                str(int(like_oxford)),
                str(worker),
                str(processes),
                json.dumps(dataclasses.asdict(style)),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for worker in range(processes)
    ]
    failed = []
    for worker in workers:
        _, stderr = worker.communicate()
        if worker.returncode:
            failed.append(stderr.decode(errors="replace").strip()[-2000:])
    if failed:
        raise RuntimeError(f"drawing synthetic pets failed in {len(failed)} of {processes} processes:\n" + failed[0])


def _write_samples(
    root: pathlib.Path,
    train_images: int,
    test_images: int,
    seed: int,
    like_oxford: bool,
    style: SpanStyle = SpanStyle(),
    worker: int = 0,
    workers: int = 1,
) -> None:
    """Draws and writes every `workers`-th sample from `worker` on (interleaved: each gets a like mix of sizes)."""
    train_rows, test_rows = sample_names(train_images, test_images, like_oxford, seed, style)
    rows = train_rows + test_rows
    for index in range(worker, len(rows), workers):
        name, species = rows[index][0], rows[index][2]
        rng = np.random.default_rng([seed, index])
        pet = render(rng, species, like_oxford, style)
        kind = ODD_IMAGES.get(name, "jpeg") if like_oxford else "jpeg"
        archive.image_path(root, name).write_bytes(encode_image(pet.image, kind, rng))
        Image.fromarray(pet.trimap).save(archive.trimap_path(root, name))
        # Like the real dataset, only trainval images have head-box XMLs (and not quite all of them).
        if index < train_images and not (like_oxford and name in MISSING_XMLS):
            archive.xml_path(root, name).write_text(_xml(name, pet, species))


if __name__ == "__main__":  # one of write_archive's drawing processes
    _root, *_numbers, _style = sys.argv[1:]
    _train, _test, _seed, _like_oxford, _worker, _workers = map(int, _numbers)
    _write_samples(
        pathlib.Path(_root),
        _train,
        _test,
        _seed,
        bool(_like_oxford),
        SpanStyle(**json.loads(_style)),
        _worker,
        _workers,
    )
