"""Caps on what a data set may make us read: archives (:mod:`photolabel.archives`) and CSV manifests
(:mod:`photolabel.sources`).

They never change a result, only whether an input is refused, so they live in
:class:`~photolabel.config.Runtime`; the CLI and the service set them from flags and settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from photolabel.errors import ConfigError

MiB = 1024**2
GiB = 1024**3

#: csv's own cap on one field (characters); a larger MAX_CSV_FIELD_BYTES could never be reached
CSV_MODULE_FIELD_LIMIT = 131_072


def _check_whole(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}", field=name)


@dataclass(frozen=True)
class ArchiveLimits:
    """How much an archive may hold, expand to, and take to extract.

    ``max_total_bytes``: the sum of the members' sizes. ``max_members``: entries of any kind.
    ``max_ratio``: decompressed bytes per byte of the archive file; it only applies above
    ``ratio_floor_bytes`` decompressed, so a small, very compressible archive is fine.
    ``max_header_bytes``: one pax or GNU long-name header. ``deadline_s``: the whole extraction.
    """

    max_total_bytes: int = 4 * GiB
    max_members: int = 200_000
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 16 * MiB
    max_header_bytes: int = 1 * MiB
    deadline_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("max_total_bytes", "max_members", "ratio_floor_bytes", "max_header_bytes"):
            _check_whole(name, getattr(self, name))
        for name in ("max_ratio", "deadline_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a number, got {value!r}", field=name)
        if self.max_ratio < 1:
            raise ConfigError(f"max_ratio must be at least 1, got {self.max_ratio}", field="max_ratio")
        if self.deadline_s <= 0:
            raise ConfigError(f"deadline_s must be more than 0 seconds, got {self.deadline_s}", field="deadline_s")


@dataclass(frozen=True)
class CsvLimits:
    """How big a CSV manifest may be: data rows (the header and blank lines not counted), and bytes in one cell."""

    max_rows: int = 1_000_000
    max_field_bytes: int = 8 * 1024

    def __post_init__(self) -> None:
        _check_whole("max_rows", self.max_rows)
        _check_whole("max_field_bytes", self.max_field_bytes)
        if self.max_field_bytes > CSV_MODULE_FIELD_LIMIT:
            raise ConfigError(f"max_field_bytes must be at most {CSV_MODULE_FIELD_LIMIT}, got {self.max_field_bytes}",
                              field="max_field_bytes")


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()
DEFAULT_CSV_LIMITS = CsvLimits()
