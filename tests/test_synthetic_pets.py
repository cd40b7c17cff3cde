"""Synthetic pets: deterministic, in the real archive layout, like the real set on demand, not solvable by colour
alone."""

import collections
import hashlib
import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from components import internals
from dataset import archive as oxford, synthetic

# Enough pets, drawn round-robin over the 37 breeds, to reach Abyssinian_34, the highest-numbered odd file
# of the real set below 1,300 samples.
LIKE_OXFORD = (1000, 230)


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return synthetic.write_archive(tmp_path_factory.mktemp("pets"), 24, 12, seed=3)


def test_same_seed_same_bytes_other_seed_differs(archive, tmp_path):
    again = synthetic.write_archive(tmp_path / "again", 24, 12, seed=3)
    other = synthetic.write_archive(tmp_path / "other", 24, 12, seed=4)
    assert _digest(again) == _digest(archive)
    assert _digest(other) != _digest(archive)


@pytest.fixture(scope="module")
def like_oxford(tmp_path_factory):
    return synthetic.write_archive(tmp_path_factory.mktemp("like_oxford"), *LIKE_OXFORD, seed=0, like_oxford=True)


def _rows(root, list_name):
    return [line.split() for line in (root / "annotations" / list_name).read_text().splitlines()]


def test_drawing_in_processes_writes_the_same_bytes(tmp_path):
    serial = synthetic.write_archive(tmp_path / "serial", 300, 20, seed=2, processes=1)
    parallel = synthetic.write_archive(tmp_path / "parallel", 300, 20, seed=2, processes=2)
    assert _digest(parallel) == _digest(serial)


def test_like_oxford_is_deterministic_per_seed(tmp_path):
    first, again, other = (
        synthetic.write_archive(tmp_path / name, 40, 20, seed=seed, like_oxford=True)
        for name, seed in (("first", 1), ("again", 1), ("other", 2))
    )
    assert _digest(again) == _digest(first)
    assert _digest(other) != _digest(first)


def test_breeds_and_ids_are_the_real_builders(tmp_path):
    # The installed builder's label names, in label order (label = CLASS_ID - 1).
    labels = tfds.builder("oxford_iiit_pet", data_dir=str(tmp_path)).info.features["label"].names
    assert [b.name for b in oxford.BREEDS] == labels
    assert [b.class_id for b in oxford.BREEDS] == list(range(1, len(labels) + 1))
    # The real archive's README: cat breeds are capitalised, dogs are not; 12 cats, 25 dogs, and
    # BREED_ID counts within a species in CLASS_ID order.
    for species, count in ((oxford.CAT, 12), (oxford.DOG, 25)):
        members = [b for b in oxford.BREEDS if b.species_id == species]
        assert len(members) == count
        assert all(b.name[0].isupper() == (species == oxford.CAT) for b in members)
        assert [b.breed_id for b in members] == list(range(1, count + 1))
    assert set(synthetic.QUICK_BREEDS) < set(oxford.BREEDS)
    assert {b.species_id for b in synthetic.QUICK_BREEDS} == {oxford.CAT, oxford.DOG}


def test_like_oxford_lists_all_37_breeds_with_their_ids(like_oxford):
    train, test = _rows(like_oxford, "trainval.txt"), _rows(like_oxford, "test.txt")
    assert (len(train), len(test)) == LIKE_OXFORD
    seen = set()
    for name, class_id, species, breed_id in train + test:
        breed = oxford.breed(name.rpartition("_")[0])
        assert (int(class_id), int(species), int(breed_id)) == (breed.class_id, breed.species_id, breed.breed_id)
        seen.add(breed.name)
    assert seen == {b.name for b in oxford.BREEDS}


def test_like_oxford_sizes_spread_like_the_real_photos(like_oxford):
    sizes = []
    for path in (like_oxford / "images").iterdir():
        with Image.open(path) as img:
            sizes.append(img.size)
    short = np.array([min(s) for s in sizes])
    aspects = collections.Counter(round(max(s) / min(s), 1) for s in sizes)
    assert short.min() <= 120 and short.max() >= 450, (short.min(), short.max())
    assert np.mean((short >= 100) & (short <= 500)) >= 0.98
    assert len({(s // 50) for s in short}) >= 6, "short sides spread over the range, not a few values"
    assert sum(1 for _, n in aspects.items() if n >= 0.03 * len(sizes)) >= 4, aspects
    assert 0.2 < np.mean([w > h for w, h in sizes]) < 0.9, "both orientations"


def test_like_oxford_stores_the_real_odd_files(like_oxford):
    names = {row[0] for row in _rows(like_oxford, "trainval.txt") + _rows(like_oxford, "test.txt")}
    expected = {
        "rgba_png": ("PNG", "RGBA"),
        "png": ("PNG", "RGB"),
        "gif": ("GIF", "P"),
        "grayscale_jpeg": ("JPEG", "L"),
        "cmyk_jpeg": ("JPEG", "CMYK"),
        "corrupt_jpeg": ("JPEG", "RGB"),
    }
    present = {name: kind for name, kind in synthetic.ODD_IMAGES.items() if name in names}
    assert {"rgba_png", "gif", "grayscale_jpeg", "cmyk_jpeg"} <= set(present.values())
    for name in names:
        with Image.open(like_oxford / "images" / f"{name}.jpg") as img:
            assert (img.format, img.mode) == expected.get(present.get(name), ("JPEG", "RGB")), name
    # Re-encoded by the builder itself, exactly as the real files of these names are.
    reencoded = internals.tfds_reencoded_names()
    assert all(
        name in reencoded
        for name, kind in synthetic.ODD_IMAGES.items()
        if kind in ("rgba_png", "png", "gif", "corrupt_jpeg")
    )
    # Trainval samples the real set has no head-box XML for have none here either.
    train = {row[0] for row in _rows(like_oxford, "trainval.txt")}
    xmls = {p.stem for p in (like_oxford / "annotations" / "xmls").iterdir()}
    assert xmls == train - synthetic.MISSING_XMLS and train & synthetic.MISSING_XMLS


@pytest.mark.parametrize("kind", sorted(set(synthetic.ODD_IMAGES.values())))
def test_every_odd_kind_decodes_with_three_channels(kind):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for seed in range(20):  # the stray bytes differ per sample
        data = synthetic.encode_image(image, kind, np.random.default_rng(seed))
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        assert decoded.shape == (37, 53, 3)
        if kind == "corrupt_jpeg":
            clean = synthetic.encode_image(image, "jpeg")
            assert len(data) > len(clean) and data.endswith(b"\xff\xd9")
            assert np.array_equal(decoded.numpy(), tf.io.decode_jpeg(clean, channels=3).numpy())
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # as staging reads it: a failure here would drop the sample as unreadable


def test_archive_layout_like_the_real_one(archive):
    ann = archive / "annotations"
    train = [line.split() for line in (ann / "trainval.txt").read_text().splitlines()]
    test = [line.split() for line in (ann / "test.txt").read_text().splitlines()]
    assert (len(train), len(test)) == (24, 12)
    assert len({r[0] for r in train + test}) == 36
    sizes = set()
    for name, class_id, species, breed_id in train + test:
        breed, _, number = name.rpartition("_")
        assert number.isdigit() and oxford.breed(breed) in synthetic.QUICK_BREEDS
        assert (int(class_id), int(species), int(breed_id)) == (
            oxford.breed(breed).class_id,
            oxford.breed(breed).species_id,
            oxford.breed(breed).breed_id,
        )
        with Image.open(archive / "images" / f"{name}.jpg") as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            size = img.size
        with Image.open(ann / "trimaps" / f"{name}.png") as tri:
            assert tri.mode == "L" and tri.size == size
            values = set(np.unique(np.asarray(tri)).tolist())
        assert values == {1, 2, 3}
        assert all(synthetic.MIN_SIDE <= s <= synthetic.MAX_SIDE for s in size)
        sizes.add(size)
    assert len(sizes) > 20, "image sizes and aspects should vary"
    # Head-box XMLs exist for trainval only, and read the way the builder's _get_head_bbox reads them.
    assert sorted(p.stem for p in (ann / "xmls").iterdir()) == sorted(r[0] for r in train)
    for name, *_ in train:
        root = ET.parse(ann / "xmls" / f"{name}.xml").getroot()
        w, h = (float(root.find("size").find(k).text) for k in ("width", "height"))
        box = root.find("object").find("bndbox")
        xmin, ymin, xmax, ymax = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        assert 1 <= xmin < xmax <= w and 1 <= ymin < ymax <= h


def test_border_band_surrounds_the_pet(archive):
    tri = np.asarray(Image.open(archive / "annotations" / "trimaps" / "Abyssinian_1.png"))
    pet = tri == 1
    # Every pet pixel touching a non-pet pixel touches the border class, never background directly.
    padded = np.pad(tri, 1, constant_values=2)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        neighbour = padded[1 + dy : 1 + dy + tri.shape[0], 1 + dx : 1 + dx + tri.shape[1]]
        assert not np.any(pet & (neighbour == 2))


def _mean_iou(truth, pred):
    ious = []
    for c in (1, 2, 3):
        union = np.sum((truth == c) | (pred == c))
        ious.append(np.sum((truth == c) & (pred == c)) / union if union else 1.0)
    return float(np.mean(ious))


def test_colour_alone_cannot_segment(tmp_path):
    root = synthetic.write_archive(tmp_path, 60, 30, seed=7)

    def pixels(list_name):
        rgb, cls = [], []
        for line in (root / "annotations" / list_name).read_text().splitlines():
            name = line.split()[0]
            rgb.append(np.asarray(Image.open(root / "images" / f"{name}.jpg")).reshape(-1, 3))
            cls.append(np.asarray(Image.open(root / "annotations" / "trimaps" / f"{name}.png")).ravel())
        return np.concatenate(rgb).astype(np.int64), np.concatenate(cls)

    train_rgb, train_cls = pixels("trainval.txt")
    test_rgb, test_cls = pixels("test.txt")

    # Bayes-optimal colour classifier on a 16^3 colour histogram: the best any per-pixel colour
    # rule (thresholds included) can do, up to quantisation.
    def bins(rgb):
        return (rgb[:, 0] // 16) * 256 + (rgb[:, 1] // 16) * 16 + rgb[:, 2] // 16

    counts = np.zeros((4096, 4), np.int64)
    np.add.at(counts, (bins(train_rgb), train_cls), 1)
    histogram_pred = counts.argmax(axis=1)[bins(test_rgb)]
    histogram_pred[histogram_pred == 0] = 2  # unseen colours: the majority class

    # Nearest class mean colour.
    means = np.stack([train_rgb[train_cls == c].mean(axis=0) for c in (1, 2, 3)])
    nearest_pred = 1 + np.argmin(((test_rgb[:, None, :] - means[None]) ** 2).sum(-1), axis=1)

    histogram_iou, nearest_iou = _mean_iou(test_cls, histogram_pred), _mean_iou(test_cls, nearest_pred)
    print(f"colour-only mean IoU: histogram {histogram_iou:.3f}, nearest mean {nearest_iou:.3f}")
    assert histogram_iou < 0.5 and nearest_iou < 0.5


def test_random_breeds_vary_with_the_seed_where_round_robin_never_does():
    def mix(seed, style):
        train, test = synthetic.sample_names(120, 30, seed=seed, style=style)
        return collections.Counter(class_id for _, class_id, _, _ in train + test)

    assert (
        mix(1, synthetic.SpanStyle())
        == mix(2, synthetic.SpanStyle())
        == {b.class_id: 25 for b in synthetic.QUICK_BREEDS}
    )
    random = synthetic.SpanStyle(random_breeds=True)
    assert mix(1, random) == mix(1, random) != mix(2, random)
    assert set(mix(1, random)) == {b.class_id for b in synthetic.QUICK_BREEDS}
    # The cat share of 150 pets spreads as sampling makes it (3 of the 6 breeds are cats: 0.5 on average).
    shares = []
    for seed in range(40):
        train, test = synthetic.sample_names(120, 30, seed=seed, style=random)
        shares.append(np.mean([species == oxford.CAT for _, _, species, _ in train + test]))
    assert 0.45 < np.mean(shares) < 0.55 and np.std(shares) > 0.02, (np.mean(shares), np.std(shares))
    train, test = synthetic.sample_names(
        40, 10, seed=3, style=synthetic.SpanStyle(random_breeds=True, species=oxford.DOG)
    )
    assert {species for _, _, species, _ in train + test} == {oxford.DOG}


def test_a_brighter_camera_and_larger_photos_draw_the_same_pets(tmp_path):
    style = synthetic.SpanStyle(random_breeds=True)
    usual = synthetic.write_archive(tmp_path / "usual", 3, 1, seed=4, style=style)
    changed = synthetic.write_archive(
        tmp_path / "changed",
        3,
        1,
        seed=4,
        processes=1,
        style=synthetic.SpanStyle(random_breeds=True, brightness=40.0, scale=1.5),
    )
    assert _rows(usual, "trainval.txt") == _rows(changed, "trainval.txt")  # the same pets, names and ids
    for path in sorted((usual / "images").iterdir()):
        before, after = Image.open(path), Image.open(changed / "images" / path.name)
        assert after.size == tuple(round(side * 1.5) for side in before.size)
        assert Image.open(changed / "annotations" / "trimaps" / f"{path.stem}.png").size == after.size
        # 40 levels brighter, less where the brighter pixels saturate at 255.
        assert 20 < np.asarray(after, np.float64).mean() - np.asarray(before, np.float64).mean() <= 40
