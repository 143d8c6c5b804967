"""Whether the cells of a run folder were made with the same package versions.

Every cell file records ``versions`` (``benchmark.results.versions``: Python, ssl3d and the
libraries that decide numbers). A folder filled by several environments (a re-run after an
upgrade, cells from another machine) mixes numerics the report cannot tell apart, so it warns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

UNRECORDED = "not recorded"


def version_counts(records: Iterable[dict[str, Any]]) -> dict[str, Counter]:
    """Per package, how many cells were made with each version (``not recorded`` when a cell
    has no entry for it)."""
    records = list(records)
    packages = sorted({package for record in records for package in record.get("versions") or {}})
    return {
        package: Counter(
            str((record.get("versions") or {}).get(package, UNRECORDED)) for record in records
        )
        for package in packages
    }


def mixed_versions_warning(records: Iterable[dict[str, Any]]) -> str | None:
    """A warning naming every package whose version differs between cells, with the number of
    cells per version; ``None`` when all cells agree."""
    mixed = {
        package: counts for package, counts in version_counts(records).items() if len(counts) > 1
    }
    if not mixed:
        return None
    described = "; ".join(
        f"{package} "
        + ", ".join(
            f"{version} ({count} cell{'s' if count != 1 else ''})"
            for version, count in sorted(counts.items())
        )
        for package, counts in mixed.items()
    )
    return (
        f"the cells of this folder were made with different package versions, so their numbers "
        f"may differ for that reason alone: {described}. Delete the cells of the other versions "
        "(their `versions` field says which) and run `ssl3d run` again in one environment"
    )
