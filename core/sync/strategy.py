"""Which missing models a strategy picks: `cfd.models` / `--models` = all | required | skip.

The one rule, for the hooks and the agent (pullsync) and for `cfd repair`.
"""

from __future__ import annotations

from typing import NamedTuple

from .marker import intent_key
from .missing import MissingModelInfo, MissingReport
from ..manifest.model import WorkflowModelRef
from ..settings import STRATEGIES

__all__ = ["STRATEGIES", "Selection", "in_scope", "missing_in_scope", "select_for_download"]


def in_scope(criticality: str, strategy: str) -> bool:
    """Whether a strategy asks for a model of this criticality."""
    return strategy == "all" or (strategy == "required" and criticality == "required")


class Selection(NamedTuple):
    models: tuple[MissingModelInfo, ...]  # downloadable, picked
    intents: tuple[WorkflowModelRef, ...]  # picked
    filtered_models: tuple[MissingModelInfo, ...]  # downloadable, left out by the strategy
    filtered_intents: tuple[WorkflowModelRef, ...]

    @property
    def chosen(self) -> int:
        """How many downloads it picks."""
        return len(self.models) + len(self.intents)


def select_for_download(report: MissingReport, strategy: str) -> Selection:
    """The downloadable models and the intents a strategy picks, and those it leaves out."""
    picked = [info for info in report.downloadable if in_scope(info.criticality, strategy)]
    picked_intents = [ref for ref in report.intents if in_scope(ref.criticality, strategy)]
    return Selection(
        models=tuple(picked),
        intents=tuple(picked_intents),
        filtered_models=tuple(info for info in report.downloadable if not in_scope(info.criticality, strategy)),
        filtered_intents=tuple(ref for ref in report.intents if not in_scope(ref.criticality, strategy)),
    )


def missing_in_scope(report: MissingReport, strategy: str) -> list[str]:
    """Keys of everything missing that the strategy asks for (downloadable or not)."""
    keys = [info.hash for info in report.missing if in_scope(info.criticality, strategy)]
    keys += [intent_key(ref) for ref in report.intents if in_scope(ref.criticality, strategy)]
    keys += [intent_key(ref) for ref in report.not_found if in_scope(ref.criticality, strategy)]
    return keys
