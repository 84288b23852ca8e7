"""The tests' fault switches and what they decide for each request (see helpers.faults)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Fault", "FaultState", "Plan", "decide"]


@dataclass(frozen=True)
class Fault:
    """Fault switches for one path; see ModelServer.set_fault."""

    fail_times: int = 0
    fail_status: int = 500
    retry_after: int | float | str | None = None
    status_always: int | None = None
    stall_after: int | None = None
    stall_times: int | None = None  # None: every request
    close_after: int | None = None
    close_times: int | None = None  # None: every request
    wrong_content_length: int | None = None
    ignore_range: bool = False
    corrupt_at: int | None = None
    extra_bytes: int = 0
    no_length: bool = False
    html_200: bool = False
    redirect_to: str | None = None
    redirect_loop: bool = False
    throttle: float | None = None  # bytes per second
    headers: dict[str, str] | None = None
    # A load-balanced mirror of N backends whose ETags differ (round robin per request);
    # each backend honours If-Range only with its own ETag.
    mirror_etags: int = 0
    drip: float | None = None  # slowloris: one body byte every `drip` seconds
    black_hole: bool = False  # accept the request, never answer (until the client hangs up)


@dataclass
class FaultState:
    """A Fault plus its counters; counters are only touched under ModelServer._lock."""

    fault: Fault
    requests: int = 0
    stalls: int = 0
    closes: int = 0


@dataclass
class Plan:
    """What the faults decided for one request."""

    fault: Fault
    fail_status: int | None = None
    cut_at: int | None = None  # body bytes to send before stalling / closing
    cut_mode: str | None = None  # "stall" | "close"
    backend: int = 0  # which mirror backend answers (Fault.mirror_etags)


def decide(state: FaultState, method: str) -> Plan:
    """Advance a path's counters for one request (caller holds the lock)."""
    fault = state.fault
    state.requests += 1
    plan = Plan(fault)
    if fault.mirror_etags:
        plan.backend = state.requests % fault.mirror_etags
    if fault.status_always is not None:
        plan.fail_status = fault.status_always
    elif state.requests <= fault.fail_times:
        plan.fail_status = fault.fail_status
    if plan.fail_status is not None or method != "GET":
        return plan
    # Stalls and closes only count requests that get a body.
    if fault.stall_after is not None and (
        fault.stall_times is None or state.stalls < fault.stall_times
    ):
        state.stalls += 1
        plan.cut_at, plan.cut_mode = fault.stall_after, "stall"
    elif fault.close_after is not None and (
        fault.close_times is None or state.closes < fault.close_times
    ):
        state.closes += 1
        plan.cut_at, plan.cut_mode = fault.close_after, "close"
    return plan
