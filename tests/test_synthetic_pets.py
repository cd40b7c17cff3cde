"""Synthetic pets: deterministic, in the real archive layout, and not solvable by colour alone."""

import hashlib
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from dataset import synthetic


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


def test_breeds_match_the_real_builder():
    from tensorflow_datasets.datasets.oxford_iiit_pet import oxford_iiit_pet_dataset_builder as b

    for breed, class_id, species in synthetic.BREEDS:
        assert b._LABEL_CLASSES[class_id - 1] == breed
        # The real dataset capitalises cat breeds only.
        assert (species == 1) == breed[0].isupper()
    assert {s for _, _, s in synthetic.BREEDS} == {1, 2}


def test_archive_layout_like_the_real_one(archive):
    ann = archive / "annotations"
    train = [line.split() for line in (ann / "trainval.txt").read_text().splitlines()]
    test = [line.split() for line in (ann / "test.txt").read_text().splitlines()]
    assert (len(train), len(test)) == (24, 12)
    assert len({r[0] for r in train + test}) == 36
    sizes = set()
    for name, class_id, species, breed_id in train + test:
        breed, _, number = name.rpartition("_")
        assert number.isdigit() and (breed, int(class_id), int(species)) in synthetic.BREEDS
        assert int(breed_id) >= 1
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
        neighbour = padded[1 + dy:1 + dy + tri.shape[0], 1 + dx:1 + dx + tri.shape[1]]
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
