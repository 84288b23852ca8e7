"""Sum a campaign's figures: `python tests/helpers/figures.py FIGURES.jsonl`.

Each test appends one JSON line through `helpers.chaos.report` (CFD_CHAOS_FIGURES);
this prints, per test (seeded runs grouped: `kill-repair[7]` counts as `kill-repair`),
the number of runs and the sum of every numeric figure, so the totals in
docs/RELIABILITY.md come from code, not from adding up by hand.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def summarise(lines: list[str]) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        test = row.pop("test").split("[", 1)[0]
        totals[test]["runs"] += 1
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[test][key] += value
    return {test: dict(figures) for test, figures in totals.items()}


def main(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        summary = summarise(handle.readlines())
    for test, figures in sorted(summary.items()):
        print(f"{test}: " + ", ".join(f"{key}={round(value, 1):g}" for key, value in figures.items()))


if __name__ == "__main__":
    main(sys.argv[1])
