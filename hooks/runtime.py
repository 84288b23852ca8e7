"""What a hook does once its shim found that pyproject.toml changed.

`python -m cfd.hooks.runtime <hook> [args...]` (the shim) or `cfd hook-run`.
Hook arguments are turned once, here, into a HookEvent (old and new commit);
everything after that is core.pullsync. Always exits 0: a hook must never
fail the git command that fired it (the shim alone passes on a legacy
post-checkout's status).
"""

from __future__ import annotations

import gc

if __name__ == "__main__":
    # The hook's process runs without the cyclic collector until it downloads: parsing two
    # 10,000-model manifests allocates ~100k objects, and collecting them, none of them
    # garbage, was ~6 ms of a changed-manifest hook. Everything else it allocates is freed
    # by reference counting; _HookCallbacks turns collection back on for the downloads.
    gc.disable()
    # glibc gives each block over 128 KiB its own mmap and unmaps it when freed, so every 3 MB
    # text and list of the diff would cost first-touch page faults anew. Freeing one mmapped
    # block raises that threshold to its size: blocks up to 8 MiB then come from the heap, and
    # the diff's next ones reuse what it let go. calloc'ed, never touched; elsewhere a no-op.
    bytes(8 << 20)

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from cfd.core.environment import Environment
    from cfd.core.sync.pullsync import PullSyncOutcome

HOOK_NAMES = ("post-merge", "post-checkout", "post-rewrite", "post-commit")  # the hooks cfd installs and handles


class HookEvent:
    """What one firing asks for: compare commit `old` with `new`."""

    __slots__ = ("hook", "old", "new")

    def __init__(self, hook: str, old: str | None, new: str) -> None:
        self.hook = hook
        self.old = old  # a revision; None = the empty manifest (after a clone)
        self.new = new


def rebase_in_progress(git_dir: Path) -> bool:
    return (git_dir / "rebase-merge").is_dir() or (git_dir / "rebase-apply").is_dir()


def parse_event(hook: str, argv: Sequence[str], git_dir: Path, parents: int | None = None) -> HookEvent | None:
    """The commits to compare, or None when this firing has nothing to do.

    `parents` is HEAD's parent count (post-commit only acts on a merge commit:
    a conflicted merge finished with `git commit` fires no post-merge).
    """
    if hook == "post-merge":
        if argv[:1] == ["1"]:  # squash: HEAD did not move
            return None
        return HookEvent(hook, "ORIG_HEAD", "HEAD")
    if hook == "post-checkout":
        if len(argv) < 3 or argv[2] != "1" or rebase_in_progress(git_dir):
            return None  # file checkout, or mid-rebase (post-rewrite comes at the end)
        return HookEvent(hook, argv[0], argv[1])
    if hook == "post-rewrite":
        # rebase-merge still exists while post-rewrite runs: do not skip for it.
        return HookEvent(hook, "ORIG_HEAD", "HEAD") if argv[:1] == ["rebase"] else None
    if hook == "post-commit":
        if (parents or 0) < 2 or rebase_in_progress(git_dir):
            return None
        return HookEvent(hook, "HEAD^1", "HEAD")
    return None


def _say(stream: TextIO, message: str) -> None:
    from cfd.core.text import sanitize

    stream.write(f"cfd: {sanitize(message)}\n")  # it may quote the manifest: one line, no escapes
    stream.flush()


def summary(outcome: PullSyncOutcome) -> str | None:
    """The one line a hook prints after acting (None when there is nothing to say)."""
    from cfd.core.sync.marker import reason_label
    from cfd.core.sync.pullsync import SYNCED

    if outcome.action != SYNCED:
        return None
    needed = len(outcome.missing) + len(outcome.intents)
    if not needed:
        return None
    parts = [f"{needed} new model(s) needed"]
    if outcome.downloaded:
        parts.append(f"{len(outcome.downloaded)} downloaded")
    if outcome.found:
        parts.append(f"{len(outcome.found)} found on disk, indexed")
    failed = len(outcome.failed) - len(outcome.over_budget)
    if failed:  # those the budget stopped are said below, as pending
        parts.append(f"{failed} failed")
    if outcome.handed_to_agent:
        where = "downloading in the background" if outcome.agent_started else "recorded for the agent (not available)"
        parts.append(f"{outcome.handed_to_agent} {where}")
    left = [e for e in outcome.pending if e.reason != "background" or not outcome.agent_started]
    if left:
        reasons: dict[str, int] = {}
        for entry in left:
            reasons[entry.reason] = reasons.get(entry.reason, 0) + 1
        detail = ", ".join(f"{n} {reason_label(reason, outcome.strategy)}" for reason, n in sorted(reasons.items()))
        return "; ".join(parts) + f"; {len(left)} pending ({detail}): run `cfd repair`"
    return "; ".join(parts)


def run_hook(hook: str, argv: Sequence[str], stdin: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Sync after a git hook fired. Returns 0, always."""
    err = stderr or sys.stderr
    if os.environ.get("CFD_SKIP", "").lower() in ("1", "true", "yes"):
        return 0
    try:
        from cfd.core.settings import start_reading_git_config

        # git config runs while the sync's modules load (settings collects it when the
        # environment is this directory, the usual case: git runs hooks at the work tree's top).
        start_reading_git_config(Path.cwd())
        _run(hook, list(argv), err)
    except KeyboardInterrupt:
        _say(err, "interrupted; what was not downloaded is recorded: run `cfd repair` to resume")
    except Exception as exc:  # noqa: BLE001 - a hook never fails git
        from cfd.core.errors import CfdError

        if os.environ.get("CFD_DEBUG"):
            raise
        if isinstance(exc, CfdError):
            _say(err, f"{hook}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        else:
            _say(err, f"{hook}: internal error: {type(exc).__name__}: {exc} (models not synced; run `cfd repair`)")
    finally:
        _stop_reading_git_config()
    return 0


def _stop_reading_git_config() -> None:
    """The early `git config` nobody collected (not an environment, an error) is never left behind."""
    settings = sys.modules.get("cfd.core.settings")
    if settings is not None:  # else nothing was started
        settings.stop_reading_git_config()


def _run(hook: str, argv: list[str], err: TextIO) -> None:
    # pygit2 is imported below, only when a firing needs it. Loading it on a thread to overlap
    # `git config` (now started by run_hook) did not pay: it holds the GIL for nearly all its
    # ~18 ms (a changed-manifest hook was ~2.5 % slower with it, one with nothing to do ~20 ms).
    from cfd.core.environment import open_environment
    from cfd.core.errors import EnvironmentNotFound

    try:
        env = open_environment(Path.cwd())
    except EnvironmentNotFound:
        return  # not a ComfyDock environment (e.g. a template hook in another repo)
    if not env.settings["cfd.hooks.enabled"]:
        return
    repo = None  # pygit2 and the sync are imported only once a firing has something to do
    if hook == "post-commit":
        from cfd.core.gitobjects import open_repo

        repo = open_repo(env.repo)
    parents = len(repo.parents("HEAD")) if repo is not None else None
    event = parse_event(hook, argv, env.git_dir, parents)
    if event is None:
        return
    from cfd.core.gitobjects import open_repo
    from cfd.core.sync.pullsync import sync_between

    from .progress import HookProgress

    class _HookCallbacks(HookProgress):
        def on_batch_start(self, total: int) -> None:
            gc.enable()  # downloads may run for minutes (threads, retries): keep their memory bounded
            super().on_batch_start(total)

    repo = repo or open_repo(env.repo)

    outcome = sync_between(env, event.old, event.new, trigger=hook, callbacks=_HookCallbacks(err), repo=repo,
                           time_budget=env.settings["cfd.hookTimeBudget"], start_agent=_start_agent)
    for warning in outcome.warnings[:3]:
        _say(err, f"warning: {warning}")
    if len(outcome.warnings) > 3:
        _say(err, f"warning: … and {len(outcome.warnings) - 3} more manifest problems (`cfd status` lists them)")
    line = summary(outcome)
    if line:
        _say(err, line)
    from cfd.core.sync.workflowfiles import previous_from_git, summary_line, sync_workflow_files

    line = summary_line(sync_workflow_files(env, previous_from_git(repo, event.old)))
    if line:
        _say(err, line)


def _start_agent(env: Environment) -> bool:
    from cfd.agent.control import start_in_background  # only when a pull hands models to the agent

    return start_in_background(env)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in HOOK_NAMES:
        sys.stderr.write(f"usage: python -m cfd.hooks.runtime {{{'|'.join(HOOK_NAMES)}}} [hook args...]\n")
        return 0
    return run_hook(args[0], args[1:], sys.stdin)


def _exit_fast(code: int) -> None:
    """End the hook's process, skipping the interpreter's teardown when nothing needs it.

    Clearing every module and shutting libgit2 down takes ~7 ms of a hook (~5 % of one on a
    10,000-model change). A hook's work is on disk by then: files written and closed, the
    index closed. Only an atexit callback or another non-daemon thread (the download engine's,
    logging's) would need the orderly exit, and then it is taken.
    """
    import atexit
    import threading

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # git closed the pipe, or gave none (the stream is None): nothing more to say
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not others and not atexit._ncallbacks():
        os._exit(code)
    sys.exit(code)


def _warn_if_run_without_safe_path() -> None:
    """Shims before version 3 start `python -m` without -P: the work tree comes first on sys.path,
    so a pulled typing.py or cfd/ would run as Python. This runtime can only say so."""
    if sys.flags.safe_path:
        return
    try:
        _say(sys.stderr, "this git hook is from an older cfd and lets files pulled into the work tree run as "
                         "Python: run `cfd hooks install` to upgrade it")
    except (AttributeError, OSError, ValueError):
        pass  # no stream to say it on


if __name__ == "__main__":
    _warn_if_run_without_safe_path()
    _exit_fast(main())
