"""The Oxford-IIIT Pet archive layout, as the TFDS builder reads it: folders, list files and id ranges."""

from __future__ import annotations

import os
import pathlib
from typing import Union

PathLike = Union[str, os.PathLike]

# TFDS split -> the list file under annotations/ the builder reads it from.
LIST_FILES = {"train": "trainval.txt", "test": "test.txt"}
# 1-based CLASS_ID (breed) and SPECIES_ID ranges of the list files' `NAME CLASS_ID SPECIES_ID BREED_ID` lines.
NUM_BREEDS, NUM_SPECIES = 37, 2


def image_path(root: PathLike, name: str) -> pathlib.Path:
    return pathlib.Path(root) / "images" / f"{name}.jpg"


def trimap_path(root: PathLike, name: str) -> pathlib.Path:
    return pathlib.Path(root) / "annotations" / "trimaps" / f"{name}.png"


def xml_path(root: PathLike, name: str) -> pathlib.Path:
    return pathlib.Path(root) / "annotations" / "xmls" / f"{name}.xml"


def list_path(root: PathLike, split: str) -> pathlib.Path:
    return pathlib.Path(root) / "annotations" / LIST_FILES[split]
