"""`ssl3d data show`: orthogonal slices of a few samples, exactly as the models see them.

The samples come from a `Cohort` (the real loading path), so crop, mirror and rescaling are
what training uses: a wrong centroid or a missing mirror shows at a glance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import ndimage

from .cohort import Cohort

# (name, array axis the plane cuts) in canonical RAS+ order: x left-right, y back-front,
# z bottom-top. Each slice is drawn with the remaining axes horizontal and vertical.
PLANES = (("sagittal", 0), ("coronal", 1), ("axial", 2))


def draw_examples(cohort: Cohort, out_png: str | Path, n_per_class: int = 3, seed: int = 0) -> Path:
    """Draw up to `n_per_class` normal and anomalous samples (unlabelled ones if none are
    labelled) as sagittal/coronal/axial slices, with the mask outlined; save as PNG.

    Slices pass through the mask's centre of mass when the mask marks anything, otherwise
    through the centre of the sample. Titles give subject, side, label and pathology.
    """
    chosen = _choose_examples(cohort.table, n_per_class, np.random.default_rng(seed))
    if not chosen:
        raise ValueError("the cohort is empty: there is nothing to draw")
    figure = Figure(figsize=(2.4 * len(PLANES), 2.8 * len(chosen)), layout="constrained")
    for example, position in zip(np.atleast_1d(figure.subfigures(len(chosen), 1)), chosen):
        image = cohort.images[position, 0].numpy()
        mask = cohort.masks[position, 0].numpy() if cohort.masks is not None else None
        centre = _slice_centre(image.shape, mask)
        example.suptitle(_describe(cohort.table.iloc[position]), fontsize=9)
        for axes, (plane, axis) in zip(example.subplots(1, len(PLANES)), PLANES):
            index = (slice(None),) * axis + (centre[axis],)
            axes.imshow(image[index].T, cmap="gray", origin="lower", vmin=0, vmax=1)
            if mask is not None and mask[index].any() and not mask[index].all():
                axes.contour(mask[index].T, levels=[0.5], colors="red", linewidths=1)
            axes.set_title(f"{plane} {'xyz'[axis]}={centre[axis]}", fontsize=8)
            axes.set_axis_off()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return out_png


def _choose_examples(table: pd.DataFrame, n_per_class: int, rng: np.random.Generator) -> list:
    """Positions of up to n normal then n anomalous rows; unlabelled rows if none is labelled."""
    labels = table["label"]
    groups = [labels == 0, labels == 1] if labels.notna().any() else [labels.isna()]
    chosen = []
    for members in groups:
        positions = np.flatnonzero(members.fillna(False).to_numpy(dtype=bool))
        count = min(n_per_class, len(positions))
        chosen += sorted(rng.choice(positions, count, replace=False).tolist())
    return chosen


def _slice_centre(shape: tuple[int, ...], mask: np.ndarray | None) -> tuple[int, ...]:
    if mask is None or not mask.any():
        return tuple(size // 2 for size in shape)
    return tuple(round(c) for c in ndimage.center_of_mass(mask))


def _describe(row: pd.Series) -> str:
    label = {0: "normal", 1: "anomalous"}.get(row["label"], "unlabelled")
    side = f"side {row['side']}" if row["side"] else "no side"
    pathology = row["pathology"].replace(";", ", ") or "no pathology"
    return f"{row['subject_id']}, {side}, {label}: {pathology}"
