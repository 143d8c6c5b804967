"""A whole cohort in memory: every manifest row preprocessed once, cached on disk as one file.

Volumes are small (64^3 float32 = 1 MiB), so a cohort of a few thousand sinuses fits in (GPU)
memory (docs/design.md, "Performance stance"). Preprocessing runs once, in parallel processes; the
result is stored as one file under `cache_dir`, keyed by the preprocessing settings, the parts
of the manifest that shape the tensors and every file's size and modification time, so that a
second load only reads that file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import volumes
from .manifest import CENTROID_COLUMNS, Manifest, ManifestError, Problem, read_manifest
from .volumes import Preprocessing, VolumeError

log = logging.getLogger(__name__)

# Part of the cache key: bump it whenever a code change alters what a cached tensor holds.
CACHE_FORMAT = 2
# The manifest columns that decide what the tensors hold (labels do not: relabelling a cohort
# keeps its cache).
TENSOR_COLUMNS = ["row", "image", "mask", *CENTROID_COLUMNS, "side"]


@dataclass
class Cohort:
    """Every usable row of a manifest, preprocessed.

    `table` holds the manifest rows (positional index 0..N-1, the manifest's columns),
    `images` is `torch.float32 [N, 1, S, S, S]` in [0, 1], `masks` is `torch.bool` of the same
    shape (all-false for rows without a mask) or `None` when the manifest has no masks.
    `sources` (aligned with `table`) says where each sample came from: `extent` (its voxels per
    axis before resizing) and the `image_sha256`/`sample_sha256` content digests of
    `volumes.Sample`. `excluded` lists the problems of every row left out, from the manifest,
    from loading or from the run's checks (`without_rows`).
    """

    table: pd.DataFrame
    images: torch.Tensor
    masks: torch.Tensor | None
    preprocessing: Preprocessing
    sources: pd.DataFrame
    excluded: list[Problem] = field(default_factory=list)
    cache_path: Path | None = None

    def __len__(self) -> int:
        return len(self.table)

    def without_rows(self, problems: list[Problem]) -> Cohort:
        """This cohort less the manifest rows (CSV lines) of `problems`, which join `excluded`."""
        keep = ~self.table["row"].isin({problem.row for problem in problems}).to_numpy()
        kept = torch.from_numpy(keep)
        return replace(
            self,
            table=self.table[keep].reset_index(drop=True),
            images=self.images[kept],
            masks=self.masks[kept] if self.masks is not None else None,
            sources=self.sources[keep].reset_index(drop=True),
            excluded=sorted(self.excluded + problems, key=lambda problem: problem.row or 0),
        )


def load_cohort(
    manifest: Manifest | str | Path,
    preprocessing: Preprocessing,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> Cohort:
    """Load every row of `manifest` (a `Manifest` or the path of its CSV) as one tensor.

    The cache lives in `cache_dir` (default `<manifest folder>/.ssl3d_cache`); a cache that is
    missing, unreadable or from another version is rebuilt, and a folder that cannot be written
    only costs the reuse. Volumes that fail to load follow the manifest's `on_bad_rows`: with
    `"error"` a `ManifestError` lists all of them, with `"exclude"` they join
    `Cohort.excluded`. `workers` processes preprocess in parallel (default: one per CPU);
    as with any multiprocessing code, a script that calls this with more than one worker needs
    the `if __name__ == "__main__":` guard.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    cache_dir = Path(cache_dir) if cache_dir else manifest.path.parent / ".ssl3d_cache"
    key = cache_key(manifest, preprocessing)
    cache_path = cache_dir / f"{manifest.path.stem}-{key[:16]}.pt"
    cached = _read_cache(cache_path, key)
    if cached is None:
        cached = _preprocess(manifest, preprocessing, workers or os.cpu_count() or 1)
        cached = {"format": CACHE_FORMAT, "key": key, **cached}
        if not _write_cache(cache_path, cached):
            cache_path = None
    failures = [Problem(manifest.path, *failure) for failure in cached["failures"]]
    if failures and manifest.on_bad_rows == "error":
        raise ManifestError(failures)
    table = manifest.table[manifest.table["row"].isin(cached["rows"])].reset_index(drop=True)
    sources = pd.DataFrame(
        {
            "extent": [tuple(extent) for extent in cached["extents"].tolist()],
            "image_sha256": cached["image_sha256"],
            "sample_sha256": cached["sample_sha256"],
        }
    )
    return Cohort(
        table=table,
        images=cached["images"],
        masks=cached["masks"],
        preprocessing=preprocessing,
        sources=sources,
        excluded=sorted(manifest.excluded + failures, key=lambda problem: problem.row or 0),
        cache_path=cache_path,
    )


def cache_key(manifest: Manifest, preprocessing: Preprocessing) -> str:
    """A hash of everything a cached cohort depends on (see the module docstring)."""
    table = manifest.table[TENSOR_COLUMNS]
    files = [file for column in ("image", "mask") for file in table[column] if file]
    stamps = {file: _stamp(os.stat(file)) for file in files}
    content = {
        "format": CACHE_FORMAT,
        "preprocessing": asdict(preprocessing),
        "rows": table.to_csv(index=False),
        "stamps": stamps,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _stamp(status: os.stat_result) -> list[int]:
    return [status.st_size, status.st_mtime_ns]


def _preprocess(manifest: Manifest, preprocessing: Preprocessing, workers: int) -> dict:
    """Preprocess every row; return the cache content (tensors of the rows that loaded)."""
    size = preprocessing.size
    records = manifest.table[TENSOR_COLUMNS].to_dict("records")
    jobs = [(position, record, preprocessing) for position, record in enumerate(records)]
    images = torch.empty((len(jobs), 1, size, size, size), dtype=torch.float32)
    masks = torch.zeros(images.shape, dtype=torch.bool) if manifest.has_masks else None
    loaded = torch.zeros(len(jobs), dtype=torch.bool)
    extents = torch.zeros((len(jobs), 3), dtype=torch.long)
    digests: list[tuple[str, str]] = [("", "")] * len(jobs)
    failures = []
    workers = max(1, min(workers, len(jobs)))
    log.info("Preprocessing %d volumes with %d worker(s)", len(jobs), workers)
    for position, sample, mask, failure in _run(jobs, workers):
        if failure is not None:
            failures.append(failure)
            continue
        loaded[position] = True
        images[position, 0] = torch.from_numpy(sample.voxels)
        extents[position] = torch.tensor(sample.extent)
        digests[position] = (sample.image_sha256, sample.sample_sha256)
        if mask is not None:
            masks[position, 0] = torch.from_numpy(mask)
    if not loaded.all():
        images = images[loaded]
        masks = masks[loaded] if masks is not None else None
    kept = loaded.numpy()
    rows = manifest.table["row"][kept].tolist()
    digests = [pair for pair, keep in zip(digests, kept) if keep]
    return {
        "rows": rows,
        "images": images,
        "masks": masks,
        "extents": extents[loaded],
        "image_sha256": [image for image, _ in digests],
        "sample_sha256": [sample for _, sample in digests],
        "failures": failures,
    }


def _run(jobs: list, workers: int):
    """`_preprocess_row` over `jobs`, in order: inline for one worker, else in a process pool."""
    if workers == 1:
        yield from map(_preprocess_row, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        yield from pool.map(_preprocess_row, jobs, chunksize=max(1, len(jobs) // (8 * workers)))


def _one_thread() -> None:
    """Worker processes share the CPUs: one torch thread each avoids oversubscription."""
    torch.set_num_threads(1)


def _preprocess_row(job: tuple[int, dict, Preprocessing]):
    """Load one row's image (and mask): (position, `volumes.Sample`, mask, None) or a failure."""
    position, record, preprocessing = job
    centroid = tuple(record[name] for name in CENTROID_COLUMNS)
    centroid = None if np.isnan(centroid[0]) else centroid
    geometry = {"preprocessing": preprocessing, "centroid": centroid, "side": record["side"]}
    try:
        sample = volumes.load_sample(record["image"], **geometry, row=record["row"])
        mask = None
        if record["mask"]:
            mask = volumes.load_mask(
                record["mask"], **geometry, image_path=record["image"], row=record["row"]
            )
    except VolumeError as error:
        failure = [error.row, error.column, f"file {str(error.path)!r}: {error.message}", error.fix]
        return position, None, None, failure
    return position, sample, mask, None


def _read_cache(path: Path, key: str) -> dict | None:
    """The cache content at `path` if it is valid for `key`, else None (saying why)."""
    if not path.exists():
        return None
    try:
        content = torch.load(path, weights_only=True)
        valid = (
            content["format"] == CACHE_FORMAT
            and content["key"] == key
            and content["images"].shape[0] == len(content["rows"])
        )
    except Exception as reason:  # noqa: BLE001 - torn/foreign files raise anything
        log.warning("The cohort cache %s cannot be read (%s); rebuilding it.", path, reason)
        return None
    if not valid:
        log.warning("The cohort cache %s is from another version; rebuilding it.", path)
        return None
    log.info("Loaded %d preprocessed volumes from %s", len(content["rows"]), path)
    return content


def _write_cache(path: Path, content: dict) -> bool:
    """Write atomically (temp file + rename); warn and return False if that is not possible."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as stream:
            temporary = stream.name
            torch.save(content, stream)
        os.replace(temporary, path)
    except OSError as reason:
        log.warning(
            "Cannot write the cohort cache %s (%s); the cohort will be preprocessed again next "
            "time. Pass a writable cache_dir to keep it.",
            path,
            reason,
        )
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
        return False
    return True
