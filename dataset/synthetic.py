"""Deterministic synthetic pets written in the real Oxford-IIIT Pet archive layout."""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
from typing import List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

# (breed, 1-based CLASS_ID = index in the builder's _LABEL_CLASSES + 1, SPECIES_ID 1 cat / 2 dog).
# Real breed names, so file names look like the real dataset's (cats capitalised, dogs not).
BREEDS: Tuple[Tuple[str, int, int], ...] = (
    ("Abyssinian", 1, 1),
    ("Bengal", 6, 1),
    ("Persian", 24, 1),
    ("beagle", 5, 2),
    ("pug", 26, 2),
    ("samoyed", 30, 2),
)

# Trimap values, as in the real annotations/trimaps PNGs.
PET, BACKGROUND, BORDER = 1, 2, 3

MIN_SIDE, MAX_SIDE = 100, 260

# Bump whenever the pictures drawn change: data prepared, and pipeline runs cached, with another
# version are then rebuilt or refused instead of silently reused. 2: pets fill ~27 % of the photo.
GENERATOR_VERSION = 2


@dataclasses.dataclass
class SyntheticPet:
    """One rendered sample: RGB image, trimap and head box (xmin, ymin, xmax, ymax, pixels)."""

    image: np.ndarray
    trimap: np.ndarray
    head_box: Tuple[int, int, int, int]


def _colour(rng: np.random.Generator) -> np.ndarray:
    # Pet, texture and clutter all draw from this one distribution, so colour alone says nothing.
    return rng.uniform(0, 255, size=3)


def _texture(rng: np.random.Generator, grid: np.ndarray, base: np.ndarray) -> np.ndarray:
    """A flat, striped or spotted float image; used for pets and distractors alike."""
    _, h, w = grid.shape
    kind = rng.integers(0, 3)
    if kind == 0:
        return np.broadcast_to(base.astype(np.float32), (h, w, 3))
    other = _colour(rng)
    if kind == 1:
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        phase = (grid[1] * math.cos(angle) + grid[0] * math.sin(angle)) / period
        on = (phase - np.floor(phase)) < rng.uniform(0.3, 0.6)
    else:
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        for _ in range(int(rng.integers(8, 30))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 9)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        on = np.asarray(layer) > 0
    return np.where(on[..., None], other.astype(np.float32), base.astype(np.float32))


def _paint(rng: np.random.Generator, img: np.ndarray, grid: np.ndarray, on: np.ndarray) -> None:
    """Fills `on` with a random texture, computed only over its bounding box (speed)."""
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if rows.size == 0:
        return
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    crop = on[box]
    img[box][crop] = _texture(rng, grid[(slice(None),) + box], _colour(rng))[crop]


def _background(rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    _, h, w = grid.shape
    c1, c2 = _colour(rng), _colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    t = grid[1] * math.cos(angle) + grid[0] * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = (c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.float32)
    if rng.random() < 0.6:
        stripes = _texture(rng, grid, c1)
        mask = np.any(stripes != c1.astype(np.float32), axis=-1)
        img[mask] = stripes[mask]
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
            draw.polygon([(cx - sx, cy + sy), (cx + sx, cy + sy), (cx + rng.uniform(-sx, sx), cy - sy)],
                         fill=255)
        else:
            draw.line([cx - sx, cy - sy, cx + sx, cy + sy], fill=255, width=int(rng.integers(3, 12)))
        _paint(rng, img, grid, np.asarray(layer) > 0)
    return img


def _pet_mask(rng: np.random.Generator, h: int, w: int, species: int) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """Ellipse body + head disc + ears (pointed for cats, hanging for dogs)."""
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
            draw.polygon([(base - ear_w / 2, hy - r * 0.55), (base + ear_w / 2, hy - r * 0.55),
                          (base + side * ear_w * 0.3, hy - r - ear_h)], fill=255)
        top = hy - r - ear_h
    else:
        ear_w, ear_h = r * rng.uniform(0.35, 0.5), r * rng.uniform(1.0, 1.4)
        for side in (-1, 1):
            ex = hx + side * r * 0.95
            draw.ellipse([ex - ear_w, hy - r * 0.4, ex + ear_w, hy - r * 0.4 + 2 * ear_h], fill=255)
        r_x = r * 0.95 + ear_w
        box = (hx - r_x, hy - r, hx + r_x, hy - r * 0.4 + 2 * ear_h)
        return np.asarray(layer) > 0, _clip_box(box, w, h)
    return np.asarray(layer) > 0, _clip_box((hx - r, top, hx + r, hy + r), w, h)


def _clip_box(box: Sequence[float], w: int, h: int) -> Tuple[int, int, int, int]:
    # VOC boxes are 1-based inclusive pixel coordinates.
    x0, y0, x1, y1 = box
    return (int(np.clip(x0, 0, w - 1)) + 1, int(np.clip(y0, 0, h - 1)) + 1,
            int(np.clip(x1, 0, w - 1)) + 1, int(np.clip(y1, 0, h - 1)) + 1)


def trimap_from_mask(mask: np.ndarray, band: int) -> np.ndarray:
    """Pet 1 / background 2 / border 3, the border straddling the outline like real trimaps."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    size = 2 * band + 1
    grown = np.asarray(image.filter(ImageFilter.MaxFilter(size))) > 0
    shrunk = np.asarray(image.filter(ImageFilter.MinFilter(size))) > 0
    trimap = np.full(mask.shape, BACKGROUND, np.uint8)
    trimap[grown & ~shrunk] = BORDER
    trimap[shrunk] = PET
    return trimap


def render(rng: np.random.Generator, species: int) -> SyntheticPet:
    """One synthetic photo of a cat (species 1) or dog (species 2)."""
    h, w = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _background(rng, grid)
    mask, head_box = _pet_mask(rng, h, w, species)
    _paint(rng, img, grid, mask)
    img += 6 * rng.standard_normal(size=img.shape, dtype=np.float32)
    # The band scales with the photo, as in real trimaps, so it survives the resize to the model's
    # input (a fixed 1-2 px band is under one pixel at 96x96 and unlearnable there).
    trimap = trimap_from_mask(mask, band=max(1, round(min(h, w) * rng.uniform(0.012, 0.022))))
    return SyntheticPet(np.clip(img, 0, 255).astype(np.uint8), trimap, head_box)


def _xml(name: str, pet: SyntheticPet, species: int) -> str:
    h, w = pet.trimap.shape
    xmin, ymin, xmax, ymax = pet.head_box
    return (f"<annotation><folder>OXIIIT</folder><filename>{name}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented><object><name>{('cat', 'dog')[species - 1]}</name>"
            f"<pose>Frontal</pose><truncated>0</truncated><occluded>0</occluded>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
            f"</bndbox><difficult>0</difficult></object></annotation>\n")


def sample_names(train_images: int, test_images: int) -> Tuple[List[Tuple[str, int, int, int]], ...]:
    """(NAME, CLASS_ID, SPECIES_ID, BREED_ID) rows of trainval.txt and test.txt, breeds round-robin."""
    rows, per_breed = [], {}
    for i in range(train_images + test_images):
        breed, class_id, species = BREEDS[i % len(BREEDS)]
        per_breed[breed] = per_breed.get(breed, 0) + 1
        # The real lists' 4th column is the breed's 1-based id within its species.
        breed_id = sorted({c for _, c, s in BREEDS if s == species}).index(class_id) + 1
        rows.append((f"{breed}_{per_breed[breed]}", class_id, species, breed_id))
    return rows[:train_images], rows[train_images:]


def write_archive(root: Union[str, pathlib.Path], train_images: int, test_images: int,
                  seed: int = 0) -> pathlib.Path:
    """Writes images/, annotations/{trimaps,xmls}/ and trainval.txt/test.txt under root; returns root.

    The same (train_images, test_images, seed) always writes the same bytes.
    """
    root = pathlib.Path(root)
    images, trimaps, xmls = root / "images", root / "annotations" / "trimaps", root / "annotations" / "xmls"
    for d in (images, trimaps, xmls):
        d.mkdir(parents=True, exist_ok=True)
    train_rows, test_rows = sample_names(train_images, test_images)
    for index, (name, _, species, _) in enumerate(train_rows + test_rows):
        pet = render(np.random.default_rng([seed, index]), species)
        Image.fromarray(pet.image).save(images / f"{name}.jpg", quality=90)
        Image.fromarray(pet.trimap).save(trimaps / f"{name}.png")
        # Like the real dataset, only trainval images have head-box XMLs.
        if index < train_images:
            (xmls / f"{name}.xml").write_text(_xml(name, pet, species))
    for list_name, rows in (("trainval.txt", train_rows), ("test.txt", test_rows)):
        (root / "annotations" / list_name).write_text("".join(f"{' '.join(map(str, r))}\n" for r in rows))
    log.info("Wrote %d train + %d test synthetic pets (seed %d) to %s", train_images, test_images, seed, root)
    return root
