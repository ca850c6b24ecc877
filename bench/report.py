"""Summarize measurements: medians, ratios to the floor, target checks, tables and the plot."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import PHASES

Key = tuple[str, int, int, str, str]  # database, value size, n, implementation, phase

KIB_PER_MIB = 1024
ROTATION_MEMORY_LIMIT_MIB = 32
FLAT_TOLERANCE_MIB = 4
"""Maximum increase of rotation memory from 10,000 to 100,000 secrets that still counts as flat.

Allocator noise alone moves a phase's peak by a few MiB between runs."""

PHASE_TITLES = {
    "bulk": "bulk import",
    "store": "store_secret",
    "get": "get_secret_by_name",
    "rotate": "rotate_key",
}


@dataclass(frozen=True)
class Summary:
    """Medians of one phase over the repetitions.

    ``us_per_secret`` comes from the paired measurements where the phase has
    them (store and get), otherwise from the solo ones; ``solo_us_per_secret``
    is always the solo median. Memory is only measured solo.
    """

    us_per_secret: float
    solo_us_per_secret: float
    peak_growth_mib: float
    repetitions: int
    spread: float  # (max - min) / median of the repetitions behind us_per_secret


def summarize(measurements: Iterable[dict[str, Any]]) -> dict[Key, Summary]:
    grouped: dict[Key, dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: {"solo": [], "paired": []}
    )
    for record in measurements:
        key = (
            record["database"],
            record["value_size"],
            record["n"],
            record["implementation"],
            record["phase"],
        )
        grouped[key][record.get("mode", "solo")].append(record)
    summaries = {}
    for key, modes in grouped.items():
        solo = [record["us_per_secret"] for record in modes["solo"]]
        times = [record["us_per_secret"] for record in modes["paired"]] or solo
        median = statistics.median(times)
        summaries[key] = Summary(
            us_per_secret=median,
            solo_us_per_secret=statistics.median(solo),
            peak_growth_mib=statistics.median(r["peak_growth_kib"] for r in modes["solo"])
            / KIB_PER_MIB,
            repetitions=len(times),
            spread=(max(times) - min(times)) / median if median else 0.0,
        )
    return summaries


def ratio(summaries: dict[Key, Summary], key: Key) -> float | None:
    """Return the time of ``key`` divided by the floor's time for the same phase and size."""
    floor = summaries.get((*key[:3], "floor", key[4]))
    measured = summaries.get(key)
    if floor is None or measured is None or floor.us_per_secret == 0:
        return None
    return measured.us_per_secret / floor.us_per_secret


def _dimensions(summaries: dict[Key, Summary]) -> tuple[list[str], list[int], list[int]]:
    databases = sorted({key[0] for key in summaries}, key=lambda name: name != "sqlite")
    value_sizes = sorted({key[1] for key in summaries})
    sizes = sorted({key[2] for key in summaries})
    return databases, value_sizes, sizes


def _cell(summary: Summary | None, digits: int = 1) -> str:
    return "–" if summary is None else f"{summary.us_per_secret:,.{digits}f}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _memory(summaries: dict[Key, Summary], key: tuple[str, int, int], phase: str) -> str:
    parts = []
    for implementation in ("floor", "fernvault", "peer"):
        summary = summaries.get((*key, implementation, phase))
        parts.append("–" if summary is None else f"{summary.peak_growth_mib:.1f}")
    return " / ".join(parts)


def markdown_tables(summaries: dict[Key, Summary]) -> str:
    """Return one Markdown table per database and value size."""
    databases, value_sizes, sizes = _dimensions(summaries)
    sections = []
    for database in databases:
        for value_size in value_sizes:
            lines = [
                f"#### {database}, {value_size}-byte values",
                "",
                "| secrets | operation | floor µs | SQL alone µs | Fernet alone µs "
                "| fernvault µs | fernvault ÷ floor | peer µs | peer ÷ floor "
                "| peak RSS growth MiB (floor / fernvault / peer) |",
                "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for n in sizes:
                base = (database, value_size, n)
                if (*base, "floor", "bulk") not in summaries:
                    continue
                for phase in PHASES:
                    row = [
                        f"{n:,}",
                        PHASE_TITLES[phase],
                        _cell(summaries.get((*base, "floor", phase))),
                        _cell(summaries.get((*base, "database", phase))),
                        _cell(summaries.get((*base, "crypto", phase))),
                        _cell(summaries.get((*base, "fernvault", phase))),
                        _times(ratio(summaries, (*base, "fernvault", phase))),
                        _cell(summaries.get((*base, "peer", phase))),
                        _times(ratio(summaries, (*base, "peer", phase))),
                        _memory(summaries, base, phase),
                    ]
                    lines.append("| " + " | ".join(row) + " |")
            sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


@dataclass(frozen=True)
class Check:
    """One target of fernvault, measured: ``limit`` is the maximum allowed ``value``."""

    target: str
    database: str
    value_size: int
    n: int
    value: float
    limit: float
    unit: str

    @property
    def met(self) -> bool:
        return self.value <= self.limit

    def line(self) -> str:
        verdict = "met" if self.met else f"missed by {self.value - self.limit:.2f}{self.unit}"
        return (
            f"- {self.target}, {self.database}, {self.value_size}-byte values, "
            f"{self.n:,} secrets: {self.value:.2f}{self.unit} "
            f"(limit {self.limit:g}{self.unit}): {verdict}"
        )


_RATIO_LIMITS = {"get": 1.3, "store": 1.2, "bulk": 1.5}
_ROTATION_LIMITS = {"sqlite": 1.0, "postgresql": 0.8}
ROTATION_TARGET_SIZE = 100_000
FLAT_FROM_SIZE = 10_000


def check_targets(summaries: dict[Key, Summary]) -> list[Check]:
    """Compare fernvault with its targets, at every size for the per-call ratios."""
    databases, value_sizes, sizes = _dimensions(summaries)
    checks = []
    for database in databases:
        for value_size in value_sizes:
            for n in sizes:
                for phase, limit in _RATIO_LIMITS.items():
                    value = ratio(summaries, (database, value_size, n, "fernvault", phase))
                    if value is not None:
                        checks.append(
                            Check(PHASE_TITLES[phase], database, value_size, n, value, limit, "×")
                        )
            checks.extend(_rotation_checks(summaries, database, value_size))
    return checks


def _rotation_checks(summaries: dict[Key, Summary], database: str, value_size: int) -> list[Check]:
    large = (database, value_size, ROTATION_TARGET_SIZE, "fernvault", "rotate")
    small = (database, value_size, FLAT_FROM_SIZE, "fernvault", "rotate")
    checks = []
    value = ratio(summaries, large)
    if value is not None:
        limit = _ROTATION_LIMITS[database]
        checks.append(
            Check("rotate_key", database, value_size, ROTATION_TARGET_SIZE, value, limit, "×")
        )
    if large in summaries:
        growth = summaries[large].peak_growth_mib
        checks.append(
            Check(
                "rotation memory", database, value_size, ROTATION_TARGET_SIZE, growth,
                ROTATION_MEMORY_LIMIT_MIB, " MiB",
            )
        )  # fmt: skip
        if small in summaries:
            increase = growth - summaries[small].peak_growth_mib
            checks.append(
                Check(
                    "rotation memory increase from 10,000 secrets", database, value_size,
                    ROTATION_TARGET_SIZE, increase, FLAT_TOLERANCE_MIB, " MiB",
                )
            )  # fmt: skip
    return checks


def noise_note(summaries: dict[Key, Summary]) -> str:
    """Return a sentence on how far repetitions spread, so a reader can weigh small ratios."""
    spreads = sorted(summary.spread for summary in summaries.values())
    if not spreads:
        return ""
    repetitions = min(summary.repetitions for summary in summaries.values())
    return (
        f"Each cell is the median of {repetitions} or more repetitions. The spread between "
        f"the fastest and the slowest repetition, relative to the median, is "
        f"{statistics.median(spreads):.0%} for the median cell and "
        f"{spreads[int(0.9 * (len(spreads) - 1))]:.0%} at the 90th percentile."
    )


_STYLES = {"floor": "tab:gray", "fernvault": "tab:green", "peer": "tab:red"}
_LINES = {"sqlite": "-", "postgresql": "--"}


MIN_PLOTTED_MIB = 0.1
"""Growth below this is drawn at this value, so the log scale can show a zero growth."""


def plot(summaries: dict[Key, Summary], path: Path, title: str) -> None:
    """Draw rotation time and memory against the number of secrets, a row per value size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    databases, value_sizes, sizes = _dimensions(summaries)
    figure, axes = plt.subplots(
        len(value_sizes), 2, figsize=(11, 4 * len(value_sizes)), squeeze=False
    )
    for row, value_size in enumerate(value_sizes):
        time_axis, memory_axis = axes[row]
        for database in databases:
            for implementation, color in _STYLES.items():
                keys = [(database, value_size, n, implementation, "rotate") for n in sizes]
                present = [(key[2], summaries[key]) for key in keys if key in summaries]
                if not present:
                    continue
                counts = [n for n, _ in present]
                seconds = [s.us_per_secret * n / 1e6 for n, s in present]
                memory = [max(s.peak_growth_mib, MIN_PLOTTED_MIB) for _, s in present]
                label = f"{implementation}, {database}"
                style = {"color": color, "linestyle": _LINES[database], "marker": "o"}
                time_axis.plot(counts, seconds, label=label, **style)
                memory_axis.plot(counts, memory, label=label, **style)
        time_axis.set(
            xscale="log", yscale="log", xlabel="secrets", ylabel="rotation time (s)",
            title=f"Rotation time, {value_size}-byte values",
        )  # fmt: skip
        memory_axis.set(
            xscale="log", yscale="log", xlabel="secrets", ylabel="peak RSS growth (MiB)",
            title=f"Rotation memory, {value_size}-byte values",
        )  # fmt: skip
        for axis in (time_axis, memory_axis):
            axis.grid(True, which="both", alpha=0.3)
        memory_axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
