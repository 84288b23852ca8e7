"""`cfd agent install-service`: a systemd user unit (Linux) or a launchd agent (macOS).

The service runs `cfd agent run --env ...` in the foreground (the service
manager supervises it) with the absolute path of this cfd, and the CFD_*
variables and PATH of the installing shell, since a service sees neither the
user's shell profile nor the current directory.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .paths import AgentPaths

KINDS = ("systemd", "launchd")
CARRIED_VARS = ("PATH", "COMFYDOCK_HOME")  # plus every CFD_*


def default_kind() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


def cfd_command() -> list[str]:
    """Absolute argv prefix for `cfd`: the script beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("cfd")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("cfd")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "cfd.cli.main"]


def carried_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(environ.items()) if k.startswith("CFD_") or k in CARRIED_VARS}


@dataclass(frozen=True)
class Service:
    kind: str
    path: Path
    label: str
    enable_hint: str
    disable_hint: str


def service_for(paths: AgentPaths, kind: str | None = None, environ: Mapping[str, str] | None = None) -> Service:
    kind = kind or default_kind()
    environ = os.environ if environ is None else environ
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    if kind == "systemd":
        config = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        name = f"cfd-agent-{paths.key}.service"
        return Service(
            kind,
            config / "systemd" / "user" / name,
            name,
            f"systemctl --user daemon-reload && systemctl --user enable --now {name}",
            f"systemctl --user disable --now {name}",
        )
    label = f"dev.cfd.agent.{paths.key}"
    plist = home / "Library" / "LaunchAgents" / f"{label}.plist"
    return Service(
        kind,
        plist,
        label,
        f"launchctl bootstrap gui/$(id -u) {plist}",
        f"launchctl bootout gui/$(id -u)/{label}",
    )


def _systemd_quote(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c in escaped for c in ' \t"\'\\;') or not escaped else escaped


def systemd_unit(argv: Sequence[str], environment: Mapping[str, str], models_dir: Path) -> str:
    lines = [
        "# Written by `cfd agent install-service`; remove with `cfd agent uninstall-service`.",
        "[Unit]",
        f"Description=cfd agent: keeps {models_dir} in sync with git-shared ComfyUI environments",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}",
        *(f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in environment.items()),
        "Restart=on-failure",
        "RestartSec=10",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def launchd_plist(label: str, argv: Sequence[str], environment: Mapping[str, str], paths: AgentPaths) -> bytes:
    return plistlib.dumps(
        {
            "Label": label,
            "ProgramArguments": list(argv),
            "EnvironmentVariables": dict(environment),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},  # restart after a crash, not after `cfd agent stop`
            "ProcessType": "Background",
            "StandardOutPath": str(paths.output),
            "StandardErrorPath": str(paths.output),
        }
    )


def install_service(
    paths: AgentPaths,
    models_dir: Path,
    env_repos: Sequence[Path],
    kind: str | None = None,
    environ: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> Service:
    environ = os.environ if environ is None else environ
    service = service_for(paths, kind, environ)
    argv = [*(command or cfd_command()), "agent", "run"]
    for repo in env_repos:
        argv += ["--env", str(Path(repo).resolve())]
    environment = carried_environment(environ)
    service.path.parent.mkdir(parents=True, exist_ok=True)
    if service.kind == "systemd":
        service.path.write_text(systemd_unit(argv, environment, models_dir), encoding="utf-8")
    else:
        paths.root.mkdir(parents=True, exist_ok=True)
        service.path.write_bytes(launchd_plist(service.label, argv, environment, paths))
    return service


def uninstall_service(paths: AgentPaths, kind: str | None = None, environ: Mapping[str, str] | None = None) -> Service | None:
    """Remove the unit/plist; None when there was none."""
    service = service_for(paths, kind, environ)
    try:
        service.path.unlink()
    except FileNotFoundError:
        return None
    return service
