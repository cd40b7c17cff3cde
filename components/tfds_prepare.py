"""Builds `oxford_iiit_pet` with the real TFDS builder from synthetic, downloaded or extracted archives."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import socket
import threading
import urllib.parse
from typing import Dict, List, Mapping, Optional, Tuple, Union

from components import internals
from dataset import synthetic as synthetic_archive
from dataset.archive import LIST_FILES
from dataset.staging import stage

log = logging.getLogger(__name__)

NAME = "oxford_iiit_pet"
SOURCES = ("synthetic", "download", "raw-dir")

PathLike = Union[str, os.PathLike]

# Resolving and connecting to a reachable archive host takes well under this; without a network the
# download would otherwise retry for minutes before failing.
REACH_TIMEOUT_S = 10.0


class DownloadUnreachableError(RuntimeError):
    """The archives must be downloaded and their host cannot be reached; the message says what to do instead."""


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


def archive_urls(builder) -> Dict[str, str]:
    """{"images": URL, "annotations": URL}: the two archives the builder downloads, from its checksums file."""
    urls = {
        pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name.split(".")[0]: url
        for url in builder.url_infos or {}
    }
    if set(urls) != {"images", "annotations"}:
        raise RuntimeError(f"the {NAME} builder no longer downloads images and annotations archives: {urls}")
    return urls


def check_reachable(urls: Mapping[str, str], timeout: float = REACH_TIMEOUT_S) -> None:
    """Raises DownloadUnreachableError within about `timeout` seconds unless every URL's host accepts a connection."""
    for host, port in sorted({_host_port(url) for url in urls.values()}):
        try:
            addresses = _resolve(host, port, timeout)
            with socket.create_connection(addresses[0][4][:2], timeout=timeout):
                pass
        except OSError as exc:
            raise DownloadUnreachableError(_offline_help(urls, f"{host}:{port} cannot be reached ({exc})")) from None


def _host_port(url: str) -> Tuple[str, int]:
    parts = urllib.parse.urlparse(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _resolve(host: str, port: int, timeout: float) -> list:
    # getaddrinfo has no timeout of its own, and a resolver that does not answer holds it for tens of
    # seconds; a daemon thread lets the check give up on time.
    result: Dict[str, object] = {}

    def lookup() -> None:
        try:
            result["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=lookup, name="resolve-archive-host", daemon=True)
    thread.start()
    thread.join(timeout)
    if "addresses" in result:
        return result["addresses"]  # type: ignore[return-value]
    raise result.get("error") or socket.timeout(f"resolving {host} took over {timeout:g} s")  # type: ignore


def _offline_help(urls: Mapping[str, str], problem: str) -> str:
    return (
        f"{NAME} must be downloaded, but {problem}. On a machine without internet, fetch the two "
        f"archives elsewhere:\n  {urls['images']}\n  {urls['annotations']}\n"
        "extract both into one folder (tar -xf images.tar.gz -C DIR; tar -xf annotations.tar.gz -C DIR; "
        "DIR then holds images/ and annotations/) and run with --oxford-raw-dir DIR "
        "(data.oxford_raw_dir: DIR in a config file)."
    )


def prepare(
    data_dir: PathLike,
    source: str,
    raw_dir: Optional[PathLike] = None,
    synthetic: Tuple[int, int, int] = (480, 120, 0),
    version: str = "4.*.*",
    strict: bool = False,
    synthetic_like_oxford: bool = False,
    download_urls: Optional[Mapping[str, str]] = None,
) -> PreparedDataset:
    """Builds `oxford_iiit_pet` into data_dir unless it is already there; returns where it is.

    synthetic: (train images, test images, seed), used when source == "synthetic";
    synthetic_like_oxford: draw them like the real set (dataset.synthetic.write_archive's like_oxford).
    download_urls: {"images": URL, "annotations": URL} for source == "download"; None = the builder's own
    (archive_urls), checked against its checksums.
    """
    import tensorflow_datasets as tfds

    check_source(source, raw_dir)
    data_dir = pathlib.Path(data_dir).resolve()
    work = data_dir / "petseg_sources"
    origin: Dict[str, object] = {"source": source}
    remote = source == "raw-dir" and "://" in os.fspath(raw_dir)
    if source == "raw-dir":
        origin["raw_dir"] = os.fspath(raw_dir) if remote else str(pathlib.Path(raw_dir).resolve())
    elif source == "synthetic":
        origin["synthetic"] = [int(v) for v in synthetic]
        origin["generator"] = synthetic_archive.GENERATOR_VERSION
        origin["like_oxford"] = bool(synthetic_like_oxford)

    builder = tfds.builder(f"{NAME}:{version}", data_dir=str(data_dir))
    record = work / f"{NAME}-{builder.version}.json"
    if builder.is_prepared():
        return _reuse(builder, data_dir, record, origin)

    skipped: Dict[str, int] = {}
    repaired: Dict[str, int] = {}
    if source == "download":
        raw = _download(builder, data_dir, work, download_urls)
    elif source == "synthetic":
        train, test, seed = (int(v) for v in synthetic)
        style = "-like-oxford" if synthetic_like_oxford else ""
        raw = synthetic_archive.write_archive(
            work / f"synthetic_raw-{train}-{test}-{seed}{style}", train, test, seed, like_oxford=synthetic_like_oxford
        )
    elif remote:
        raw = _copy_to_local(os.fspath(raw_dir), work / "raw")
    else:
        raw = pathlib.Path(raw_dir).resolve()
    staging = work / "staging"
    skipped, repaired = stage(raw, staging, strict=strict, reencoded_names=internals.tfds_reencoded_names())
    _build_offline(builder, staging)
    builder = tfds.builder(f"{NAME}:{builder.version}", data_dir=str(data_dir))  # plain TFDS reads it back
    # The builder has read everything; the staging copy is symlinks and a few re-encodes.
    shutil.rmtree(staging, ignore_errors=True)
    if remote:
        shutil.rmtree(raw, ignore_errors=True)
    prepared = _describe(builder, data_dir, origin, skipped, repaired)
    work.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(dataclasses.asdict(prepared), indent=2, sort_keys=True))
    log.info(
        "Prepared %s %s: %s examples, skipped %s, repaired %s",
        NAME,
        prepared.version,
        prepared.num_examples,
        skipped or "none",
        repaired or "none",
    )
    return prepared


def _copy_to_local(remote: str, local: pathlib.Path) -> pathlib.Path:
    """Copies an extracted archive folder on gs:// (any tf.io.gfile filesystem) to `local`; returns it.

    Staging checks every file with PIL and links the good ones, which needs local files.
    """
    import tensorflow as tf

    shutil.rmtree(local, ignore_errors=True)
    log.info("Copying %s to %s", remote, local)
    for folder, _, files in tf.io.gfile.walk(remote):
        target = local / os.path.relpath(folder.rstrip("/"), remote.rstrip("/"))
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            tf.io.gfile.copy(os.path.join(folder, name), str(target / name), overwrite=True)
    return local


def _download(
    builder, data_dir: pathlib.Path, work: pathlib.Path, download_urls: Optional[Mapping[str, str]]
) -> pathlib.Path:
    """Downloads and extracts the two archives with TFDS's download manager; returns a folder of both.

    The builder's own download_and_prepare would hand the real archive straight to the builder, which
    fails on its GIF files (tf.io.encode_jpeg rejects the 4-D frames decode_image gives for a GIF); the
    downloaded archive goes through staging like any extracted one instead.
    """
    import tensorflow_datasets as tfds

    urls = dict(download_urls) if download_urls is not None else archive_urls(builder)
    check_reachable(urls)
    log.info("Downloading %s into %s", ", ".join(urls.values()), data_dir / "downloads")
    manager = tfds.download.DownloadManager(
        download_dir=data_dir / "downloads",
        dataset_name=NAME,
        url_infos=builder.url_infos if download_urls is None else None,
    )
    extracted = manager.download_and_extract(urls)
    # Each archive extracts to a folder holding images/ or annotations/; staging wants both side by side.
    raw = work / "downloaded"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    for part in ("images", "annotations"):
        (raw / part).symlink_to(pathlib.Path(os.fspath(extracted[part])) / part)
    return raw


def _reuse(builder, data_dir: pathlib.Path, record: pathlib.Path, origin: Dict[str, object]) -> PreparedDataset:
    # Rebuilding would need a new TFDS version; a dataset from another source must not be mistaken
    # for the one asked for, so a mismatch is an error rather than a silent reuse.
    if record.exists():
        previous = json.loads(record.read_text())
        if previous["origin"] != origin:
            raise ValueError(
                f"{builder.data_dir} already holds {NAME} prepared from {previous['origin']}, "
                f"not {origin}; use another data_dir or delete that one"
            )
        skipped, repaired = previous["skipped"], previous["repaired"]
    elif origin["source"] == "download":
        skipped, repaired = {}, {}  # prepared by plain TFDS elsewhere: the real dataset
    else:
        raise ValueError(
            f"{builder.data_dir} holds a {NAME} not prepared by this module (no {record}); "
            f"it cannot be the {origin['source']} data asked for; use another data_dir"
        )
    log.info("Reusing %s %s in %s (skipped %s)", NAME, builder.version, builder.data_dir, skipped or "none")
    return _describe(builder, data_dir, origin, skipped, repaired)


def _describe(builder, data_dir: pathlib.Path, origin, skipped, repaired) -> PreparedDataset:
    splits = builder.info.splits
    files = {s: sorted(os.fspath(p) for p in splits[s].filepaths) for s in LIST_FILES}
    return PreparedDataset(
        name=NAME,
        version=str(builder.version),
        data_dir=os.fspath(data_dir),
        dataset_dir=os.fspath(builder.data_dir),
        source=str(origin["source"]),
        file_patterns={
            s: os.path.join(builder.data_dir, f"{NAME}-{s}.{builder.info.file_format.value}*") for s in LIST_FILES
        },
        files=files,
        num_examples={s: int(splits[s].num_examples) for s in LIST_FILES},
        skipped=dict(skipped),
        repaired=dict(repaired),
        origin=dict(origin),
    )


def _build_offline(builder, archive_root: pathlib.Path) -> None:
    """Runs the real builder's example generation and writers on an extracted archive folder."""
    log.info("Building %s %s from %s", NAME, builder.version, archive_root)
    extracted = internals.extracted_tfds_builder(NAME, tuple(LIST_FILES.items()))(
        archive_root, data_dir=builder.data_dir_root, version=str(builder.version)
    )
    extracted.download_and_prepare()
