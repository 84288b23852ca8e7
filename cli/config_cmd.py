"""`cfd config`: the effective settings and where each came from."""

from __future__ import annotations

import argparse

from cfd.core.errors import ConfigError
from cfd.core.settings import SPECS, git_config_text, suggest_key

from .common import add_env_argument, environment, print_json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lines = "\n".join(f"  {spec.key:<26} {spec.env:<28} {spec.help}" for spec in SPECS)
    parser = subparsers.add_parser(
        "config",
        help="show the effective settings and their sources",
        description="Show every cfd setting, its value and where it came from "
        "(flag > CFD_* environment variable > git config > ComfyDock workspace > default).\n\n"
        f"  {'git config key':<26} {'environment variable':<28} meaning\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print as JSON")
    add_env_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    env = environment(args)
    env.settings.read.update(spec.key for spec in SPECS)  # shown below, with any error: no separate warning
    rows = []
    for setting in env.settings.all():
        value, source = setting.value, setting.source
        if setting.key == "cfd.index" and value is None:
            try:
                value, source = env.index_path, "default (<modelsDir>/.cfd/models.db)"
            except ConfigError:  # no models dir yet: `cfd config` is where one looks for it
                source = "default (<modelsDir>/.cfd/models.db; no models dir set)"
        row = {"key": setting.key, "value": setting.raw if setting.error else git_config_text(value), "source": source}
        if setting.error is not None:
            row["error"] = f"{setting.error.message}; {setting.error.hint}"
        rows.append(row)
    unknown = [
        {"key": key, "scope": scope, "did_you_mean": suggest_key(key)} for key, scope in sorted(env.settings.unknown_keys.items())
    ]
    if args.json:
        print_json(
            {
                "environment": str(env.repo),
                "workspace": str(env.workspace.root) if env.workspace else None,
                "settings": rows,
                "unknown_keys": unknown,
            }
        )
        return 0
    print(f"environment: {env.repo}")
    print(f"workspace:   {env.workspace.root if env.workspace else '(none)'}")
    width = max(len(row["key"]) for row in rows)
    for row in rows:
        value = "(unset)" if row["value"] is None else row["value"]
        print(f"{row['key']:<{width}}  {value}  [{row['source']}]")
        if "error" in row:
            print(f"{'':<{width}}  ^ invalid (what reads it stops): {row['error']}")
    for entry in unknown:
        guess = f" (did you mean {entry['did_you_mean']}?)" if entry["did_you_mean"] else ""
        print(f"unknown key {entry['key']} in git config ({entry['scope']}): cfd ignores it{guess}")
    return 0
