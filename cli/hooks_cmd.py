"""`cfd hooks install | uninstall | status`, and the hidden `cfd hook-run` the shims fall back to."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cfd.core.errors import CfdError, ConfigError
from cfd.hooks.install import (
    HooksStatus,
    InstallReport,
    hooks_status,
    install_global,
    install_hooks,
    record_baseline,
    uninstall_global,
    uninstall_hooks,
)
from cfd.hooks.runtime import HOOK_NAMES

from .common import add_env_argument, environment, print_json, warn

GLOBAL_HELP = (
    "--global puts the hooks in git's init.templateDir (the configured one, else "
    "$XDG_CONFIG_HOME/cfd/git-template, which it then configures), so every later `git clone` "
    "or `git init` gets them; existing clones still need `cfd hooks install`."
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "hooks",
        help="install, remove or inspect the git hooks that sync models on pull/checkout/rebase",
        description="Git hooks (post-merge, post-checkout, post-rewrite, post-commit) that fetch the models a "
        "pulled pyproject.toml needs, per cfd.onPull (download|background|defer) and cfd.models "
        "(all|required|skip). Turn them off with CFD_SKIP=1 or `git config cfd.hooks.enabled false`.",
        epilog=GLOBAL_HELP,
    )
    actions = parser.add_subparsers(dest="hooks_action", metavar="ACTION", required=True)

    install = actions.add_parser(
        "install",
        help="install the hooks in this clone (idempotent; upgrades old ones)",
        description="Install cfd's git hooks in this clone (or, with --global, for every later clone). Existing "
        "hooks of other tools are kept and still run; running it again upgrades cfd's hooks.",
        epilog=GLOBAL_HELP,
    )
    install.add_argument("--global", dest="global_", action="store_true", help="install for new clones (init.templateDir)")
    install.add_argument("--force", action="store_true", help="write into a core.hooksPath another tool owns")
    install.add_argument(
        "--python", metavar="PATH", help="interpreter the hooks run cfd with (default: the one running this command)"
    )
    add_env_argument(install)
    install.set_defaults(handler=run_install)

    uninstall = actions.add_parser(
        "uninstall",
        help="remove cfd's hooks and restore the ones they replaced",
        description="Remove cfd's git hooks from this clone (or, with --global, from init.templateDir) and put back "
        "the hooks they had replaced. Models, the index and the pending list are left as they are.",
    )
    uninstall.add_argument("--global", dest="global_", action="store_true", help="remove them from init.templateDir")
    add_env_argument(uninstall)
    uninstall.set_defaults(handler=run_uninstall)

    status = actions.add_parser(
        "status",
        help="installed / outdated / missing / bypassed / foreign, per hook",
        description="Show, per hook, whether cfd's hook is installed, outdated (run `cfd hooks install`), missing, "
        "chained (another tool's hook calls it), bypassed (core.hooksPath makes git look elsewhere) or foreign "
        "(another tool's hook is there). Exit 0 when every hook runs cfd, 1 otherwise.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    add_env_argument(status)
    status.set_defaults(handler=run_status)

    # Hidden (no help=): what a shim runs when its recorded interpreter is gone.
    hook_run = subparsers.add_parser("hook-run", add_help=False)
    hook_run.add_argument("hook", choices=HOOK_NAMES)
    hook_run.add_argument("hook_args", nargs=argparse.REMAINDER)
    hook_run.set_defaults(handler=run_hook_run)


def _repo(args: argparse.Namespace) -> Path:
    start = getattr(args, "env", None)
    try:
        return environment(args).repo
    except CfdError:
        # Hooks can go into any git repo; the environment check is for the report.
        return Path(start or os.getcwd()).resolve()


def _print_changes(report: InstallReport) -> None:
    for change in report.changes:
        if change.detail:
            print(f"  {change.hook}: {change.detail}")


def run_install(args: argparse.Namespace) -> int:
    if args.global_:
        report = install_global(args.python)
        print(f"cfd hooks installed in the git template {report.directory}: new clones get them.")
        _print_changes(report)
        return 0 if report.ok else 1
    report = install_hooks(_repo(args), args.python, force=args.force)
    location = report.location
    assert location is not None
    if report.chain:
        print(f"core.hooksPath = {location.hooks_path} belongs to {report.tool}: cfd did not write there.")
        print(f"cfd's hooks are in {report.directory}; to chain them, add one line to each hook:")
        for path, line in report.chain:
            print(f"  {path}:\n    {line}")
        print("(or `cfd hooks install --force` to write into that directory anyway)")
        _report_missing(args)
        return 1
    verb = "up to date" if all(c.action == "unchanged" for c in report.changes) else "installed"
    print(f"cfd hooks {verb} in {report.directory}: {', '.join(c.hook for c in report.changes if c.action != 'conflict')}")
    _print_changes(report)
    _report_missing(args)
    return 0 if report.ok else 1


def _report_missing(args: argparse.Namespace) -> None:
    try:
        status = record_baseline(environment(args))
    except ConfigError as exc:
        warn(f"cannot check for missing models yet: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        return
    except CfdError:
        return  # not a ComfyDock environment: nothing to check
    count = len(status.report.downloadable) + len(status.report.intents)
    if count:
        where = f" --env {status.env.repo}" if Path.cwd().resolve() != status.env.repo.resolve() else ""
        print(f"{count} model(s) this environment needs are already missing: run `cfd{where} repair`")


def run_uninstall(args: argparse.Namespace) -> int:
    report = uninstall_global() if args.global_ else uninstall_hooks(_repo(args))
    removed = [c for c in report.changes if c.action in ("removed", "restored")]
    print(f"cfd hooks removed from {report.directory}" if removed else "no cfd hooks were installed")
    _print_changes(report)
    return 0


def run_status(args: argparse.Namespace) -> int:
    status = hooks_status(_repo(args))
    try:
        enabled: bool | None = bool(environment(args).settings["cfd.hooks.enabled"])
    except CfdError:
        enabled = None
    if args.json:
        print_json({**status.to_json(), "enabled": enabled, "skip": bool(os.environ.get("CFD_SKIP"))})
    else:
        print_hooks_status(status, enabled)
    return 0 if status.all_installed else 1


def print_hooks_status(status: HooksStatus, enabled: bool | None = None) -> None:
    location = status.location
    print(f"Hooks dir: {location.hooks_dir}" + (f" (core.hooksPath = {location.hooks_path})" if location.hooks_path else ""))
    for hook in status.hooks:
        print(f"  {hook.hook:<14} {hook.state}" + (f" — {hook.detail}" if hook.detail else ""))
    if os.environ.get("CFD_SKIP"):
        print("CFD_SKIP is set: the hooks do nothing in this shell.")
    if enabled is False:
        print("cfd.hooks.enabled is false: the hooks do nothing (`git config cfd.hooks.enabled true` turns them on).")
    if status.global_template:
        print(f"New clones get the hooks from {status.global_template}.")
    if not status.all_installed:
        print("Run `cfd hooks install` to install or upgrade them.")


def run_hook_run(args: argparse.Namespace) -> int:
    from cfd.hooks.runtime import run_hook

    return run_hook(args.hook, args.hook_args, sys.stdin)
