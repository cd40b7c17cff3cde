"""The Oxford-IIIT Pet archive layout, as the TFDS builder reads it: folders, list files, breeds and their ids."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Tuple, Union

PathLike = Union[str, os.PathLike]

# TFDS split -> the list file under annotations/ the builder reads it from.
LIST_FILES = {"train": "trainval.txt", "test": "test.txt"}

CAT, DOG = 1, 2  # SPECIES_ID column

# The real archive's 37 breeds in CLASS_ID order, as its file names spell them (`<breed>_<n>.jpg`): cats
# capitalised, dogs in lower case. The TFDS builder's `label` names are this list in this order.
_BREED_SPECIES: Tuple[Tuple[str, int], ...] = (
    ("Abyssinian", CAT),
    ("american_bulldog", DOG),
    ("american_pit_bull_terrier", DOG),
    ("basset_hound", DOG),
    ("beagle", DOG),
    ("Bengal", CAT),
    ("Birman", CAT),
    ("Bombay", CAT),
    ("boxer", DOG),
    ("British_Shorthair", CAT),
    ("chihuahua", DOG),
    ("Egyptian_Mau", CAT),
    ("english_cocker_spaniel", DOG),
    ("english_setter", DOG),
    ("german_shorthaired", DOG),
    ("great_pyrenees", DOG),
    ("havanese", DOG),
    ("japanese_chin", DOG),
    ("keeshond", DOG),
    ("leonberger", DOG),
    ("Maine_Coon", CAT),
    ("miniature_pinscher", DOG),
    ("newfoundland", DOG),
    ("Persian", CAT),
    ("pomeranian", DOG),
    ("pug", DOG),
    ("Ragdoll", CAT),
    ("Russian_Blue", CAT),
    ("saint_bernard", DOG),
    ("samoyed", DOG),
    ("scottish_terrier", DOG),
    ("shiba_inu", DOG),
    ("Siamese", CAT),
    ("Sphynx", CAT),
    ("staffordshire_bull_terrier", DOG),
    ("wheaten_terrier", DOG),
    ("yorkshire_terrier", DOG),
)


@dataclasses.dataclass(frozen=True)
class Breed:
    """One breed and the ids of a list-file line `NAME CLASS_ID SPECIES_ID BREED_ID` (all 1-based)."""

    name: str
    class_id: int  # position among all 37 breeds; the builder stores class_id - 1 as `label`
    species_id: int  # CAT or DOG; the builder stores species_id - 1 as `species`
    breed_id: int  # position among the breeds of its species (the builder ignores it)


BREEDS: Tuple[Breed, ...] = tuple(
    Breed(name, class_id, species, 1 + sum(1 for _, s in _BREED_SPECIES[: class_id - 1] if s == species))
    for class_id, (name, species) in enumerate(_BREED_SPECIES, 1)
)
NUM_BREEDS, NUM_SPECIES = len(BREEDS), 2


def breed(name: str) -> Breed:
    """The breed called `name` (as spelled in file names); KeyError for any other name."""
    for candidate in BREEDS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"{name!r} is not an Oxford-IIIT Pet breed")


def image_path(root: PathLike, name: str) -> pathlib.Path:
    return pathlib.Path(root) / "images" / f"{name}.jpg"


def trimap_path(root: PathLike, name: str) -> pathlib.Path:
    return pathlib.Path(root) / "annotations" / "trimaps" / f"{name}.png"


def xml_path(root: PathLike, name: str) -> pathlib.Path:
    return pathlib.Path(root) / "annotations" / "xmls" / f"{name}.xml"


def list_path(root: PathLike, split: str) -> pathlib.Path:
    return pathlib.Path(root) / "annotations" / LIST_FILES[split]
