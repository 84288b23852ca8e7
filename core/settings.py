"""cfd's settings: one place that resolves every knob and says where it came from.

Order, like git-lfs's `lfs.*` keys: command-line flag > `CFD_*` environment
variable > git config (repo-local over global) > ComfyDock workspace > default.
Git config is read with one `git config` call (a few ms, no pygit2 import).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .git import GitError, StartedGit, run_git, start_git

MAX_CONNECTIONS = 64  # per file: past this a server sees a flood, not a download
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# The values of cfd.models (core/sync/strategy.py says what each picks) and cfd.onPull.
STRATEGIES = ("all", "required", "skip")
ON_PULL_MODES = ("download", "background", "defer")


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise ValueError(f"expected one of {'|'.join(allowed)}")
        return lowered

    return convert


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false")


def _positive_int(value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError("expected a whole number of at least 1")
    return number


def _connections(value: str) -> int | str:
    """`auto` (grow while it pays, up to AUTO_CONNECTIONS) or the most connections per file."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        number = _positive_int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_CONNECTIONS:
        raise ValueError(f"expected auto or a whole number from 1 to {MAX_CONNECTIONS}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError("expected a positive number of seconds")
    return number


_BINARY = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _scaled(text: str, units: str) -> tuple[float, int]:
    """(number, multiplier) of "64G"-style text whose suffix is one of `units` (NaN: not a number)."""
    scale = _BINARY[text[-1]] if text[-1:] and text[-1] in units else 1
    try:
        return float(text[:-1] if scale != 1 else text), scale
    except ValueError:
        return math.nan, scale


def _rate(value: str) -> int:
    """Bytes per second; accepts suffixes K, M, G (binary), 0 = unlimited."""
    number, scale = _scaled(value.strip().upper().removesuffix("B").removesuffix("/S"), "KMG")
    if not (math.isfinite(number) and number >= 0):
        raise ValueError("expected a rate like 50M (bytes per second) or 0")
    return int(number * scale)


def _size(value: str) -> int:
    """Bytes; accepts suffixes K, M, G, T (binary)."""
    number, scale = _scaled(value.strip().upper().removesuffix("B").removesuffix("I"), "KMGT")
    if not (math.isfinite(number) and number * scale >= 1):
        raise ValueError("expected a size like 64G")
    return int(number * scale)


def _limit(value: str) -> int:
    """Bytes; accepts suffixes K, M, G (binary), 0 = no limit."""
    try:
        return _rate(value)
    except ValueError:
        raise ValueError("expected a size like 32M (bytes) or 0") from None


def _mirror(value: str) -> str:
    """`s3://bucket` or `s3://bucket/prefix` (checked fully by cfd.core.mirror.config)."""
    from .mirror.config import parse_mirror_url

    bucket, prefix = parse_mirror_url(value)
    return f"s3://{bucket}/{prefix}".rstrip("/")


def _endpoint(value: str) -> str:
    from .mirror.config import parse_endpoint

    return parse_endpoint(value)


def _path(value: str) -> Path:
    return Path(os.path.expanduser(value.strip()))


class SettingSpec:
    __slots__ = ("key", "env", "default", "convert", "help")

    def __init__(self, key: str, env: str, default: Any, convert: Callable[[str], Any], help: str) -> None:
        self.key = key  # git config name, as documented (camelCase)
        self.env = env
        self.default = default
        self.convert = convert
        self.help = help


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("cfd.modelsDir", "CFD_MODELS_DIR", None, _path, "models directory (default: the ComfyGit / ComfyDock workspace's)"),
    SettingSpec("cfd.index", "CFD_INDEX", None, _path, "SQLite model index (default: the workspace's comfygit_cache/ or comfydock_cache/models.db, else under <modelsDir>/.cfd/)"),
    SettingSpec("cfd.models", "CFD_MODELS", "required", _choice(*STRATEGIES), "which missing models a hook downloads: all | required | skip"),
    SettingSpec("cfd.onPull", "CFD_ON_PULL", "download", _choice(*ON_PULL_MODES), "what a hook does: download now | background (agent) | defer (record only)"),
    SettingSpec("cfd.jobs", "CFD_JOBS", 4, _positive_int, "files downloaded at once"),
    SettingSpec("cfd.connections", "CFD_CONNECTIONS", "auto", _connections, "most connections per large file when the server supports ranges; auto: more while they add speed, up to 16"),
    SettingSpec("cfd.allowPrivateNetworks", "CFD_ALLOW_PRIVATE_NETWORKS", False, _bool, "allow downloads from loopback/private/link-local addresses"),
    SettingSpec("cfd.stallTimeout", "CFD_STALL_TIMEOUT", 30.0, _seconds, "seconds without a byte before a download counts as stalled"),
    SettingSpec("cfd.lowSpeedLimit", "CFD_LOW_SPEED_LIMIT", 1024, _rate, "a download slower than this (bytes/s) for cfd.lowSpeedTime fails and is retried; 0 = no limit"),
    SettingSpec("cfd.lowSpeedTime", "CFD_LOW_SPEED_TIME", 30.0, _seconds, "seconds over which cfd.lowSpeedLimit is measured"),
    SettingSpec("cfd.hookTimeBudget", "CFD_HOOK_TIME_BUDGET", 300.0, _seconds, "seconds a git hook may spend downloading; what is left then is pending for `cfd repair`"),
    SettingSpec("cfd.maxUnknownSize", "CFD_MAX_UNKNOWN_SIZE", 64 * 1024**3, _size, "largest download whose size the manifest does not give (an unresolved model), e.g. 64G"),
    SettingSpec("cfd.retries", "CFD_RETRIES", 5, _positive_int, "attempts per source on connection errors, 5xx and 429"),
    SettingSpec("cfd.hooks.enabled", "CFD_HOOKS_ENABLED", True, _bool, "run the git hooks (CFD_SKIP=1 also turns them off)"),
    SettingSpec("cfd.maxManifestSize", "CFD_MAX_MANIFEST_SIZE", 32 * 1024 * 1024, _limit, "largest pyproject.toml a hook reads (e.g. 32M); above it the hook leaves the work to `cfd repair`; 0 = no limit"),
    SettingSpec("cfd.mirror", "CFD_MIRROR", None, _mirror, "team mirror: s3://bucket or s3://bucket/prefix (credentials the standard AWS way); unset = none"),
    SettingSpec("cfd.mirror.endpoint", "CFD_MIRROR_ENDPOINT", None, _endpoint, "the mirror's S3 endpoint URL when it is not AWS (MinIO, R2, rclone serve s3); default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL"),
    SettingSpec("cfd.mirror.publish", "CFD_MIRROR_PUBLISH", True, _bool, "upload each model downloaded from an origin (and verified) to the mirror"),
    SettingSpec("cfd.mirror.only", "CFD_MIRROR_ONLY", False, _bool, "download from the mirror only, never from the manifest's sources (offline studios)"),
    SettingSpec("cfd.agent.maxRate", "CFD_AGENT_MAX_RATE", 0, _rate, "agent download rate cap in bytes/s (e.g. 50M); 0 = unlimited"),
)
SPEC_BY_KEY = {spec.key.lower(): spec for spec in SPECS}


class Setting:
    __slots__ = ("key", "value", "source", "raw", "error")

    def __init__(self, key: str, value: Any, source: str, raw: str | None = None, error: ConfigError | None = None) -> None:
        self.key = key
        self.value = value
        self.source = source  # "flag", "env CFD_X", "git config (local)", "workspace", "default"
        # A value cfd cannot use: the raw text and the ConfigError that reading it raises.
        self.raw = raw
        self.error = error


class Settings:
    """Resolved settings for one environment.

    A bad value is kept, not raised at once: only what reads it stops (a bad
    hook-only setting must not break `cfd status`), and `cfd config` can show it.
    """

    def __init__(self, values: Mapping[str, Setting], unknown_keys: Mapping[str, str] | None = None) -> None:
        self._values = dict(values)
        self.unknown_keys = dict(unknown_keys or {})  # cfd.* git config keys cfd does not know -> scope
        self.read: set[str] = set()  # keys a command has read, so the CLI warns only about the others

    def __getitem__(self, key: str) -> Any:
        setting = self._values[key.lower()]
        self.read.add(setting.key)
        if setting.error is not None:
            raise setting.error
        return setting.value

    def problems(self) -> list[Setting]:
        """The settings whose value cfd cannot use."""
        return [setting for setting in self.all() if setting.error is not None]

    def setting(self, key: str) -> Setting:
        return self._values[key.lower()]

    def all(self) -> list[Setting]:
        return [self._values[spec.key.lower()] for spec in SPECS]

    def with_value(self, key: str, value: Any, source: str) -> Settings:
        values = dict(self._values)
        values[key.lower()] = Setting(SPEC_BY_KEY[key.lower()].key, value, source)
        return Settings(values, self.unknown_keys)


def suggest_key(key: str) -> str | None:
    """The known key a mistyped `cfd.*` key most likely meant (`cfd.modelDir` -> `cfd.modelsDir`)."""
    import difflib  # only for a key nobody knows: "did you mean"

    close = difflib.get_close_matches(key.lower(), SPEC_BY_KEY, n=1, cutoff=0.75)
    return SPEC_BY_KEY[close[0]].key if close else None


def git_config_text(value: Any) -> str | None:
    """A value written the way `git config` takes it back: `true`, `30`, not `True`, `30.0`."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_CONFIG_ARGS = ("config", "--show-scope", "-z", "--get-regexp", r"^cfd\.")
_CONFIG_TIMEOUT = 10.0
_early: tuple[Path | None, StartedGit] | None = None  # start_reading_git_config's run, not yet collected


def start_reading_git_config(repo: Path) -> None:
    """Start the `git config` read_git_config(repo) runs, now: a hook starts it before its
    imports, and git answers on the other core meanwhile (~2 ms of every hook that runs Python).
    The next read_git_config(repo) collects it; stop_reading_git_config() ends it otherwise."""
    global _early
    stop_reading_git_config()
    cwd = _config_cwd(repo)
    try:
        _early = (cwd, start_git(*_CONFIG_ARGS, cwd=cwd, timeout=_CONFIG_TIMEOUT))
    except GitError:
        _early = None  # read_git_config runs it again and copes


def stop_reading_git_config() -> None:
    """End an early read nobody collected (not an environment, an error): killed, reaped."""
    global _early
    early, _early = _early, None
    if early is not None:
        early[1].stop()


def _config_cwd(repo: Path | None) -> Path | None:
    return repo if repo and repo.is_dir() else None


def read_git_config(repo: Path | None) -> dict[str, tuple[str, str]]:
    """cfd.* keys from git config: lowercased key -> (value, scope)."""
    global _early
    cwd = _config_cwd(repo)
    try:
        if _early is not None and _early[0] == cwd:
            started, _early = _early[1], None
            result = started.result()
        else:
            result = run_git(*_CONFIG_ARGS, cwd=cwd, timeout=_CONFIG_TIMEOUT)
    except GitError:
        return {}
    found: dict[str, tuple[str, str]] = {}
    # -z output: "scope\0key\nvalue\0" per entry; later (more local) entries win.
    parts = result.stdout.decode("utf-8", "replace").split("\0")
    for scope, entry in zip(parts[0::2], parts[1::2]):
        key, separator, value = entry.partition("\n")
        # A key written without "= value" is git's shorthand for true.
        found[key.lower()] = (value if separator else "true", scope)
    return found


def resolve_settings(
    repo: Path | None,
    flags: Mapping[str, Any] | None = None,
    workspace_defaults: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    workspace_label: str = "ComfyDock workspace",  # where workspace defaults come from, for `cfd config`
) -> Settings:
    environ = os.environ if environ is None else environ
    flags = flags or {}
    workspace_defaults = workspace_defaults or {}
    git_values = read_git_config(repo)
    values: dict[str, Setting] = {}
    for spec in SPECS:
        lowered = spec.key.lower()
        if flags.get(spec.key) is not None:
            values[lowered] = Setting(spec.key, flags[spec.key], "flag")
            continue
        raw: tuple[str, str] | None = None
        if environ.get(spec.env, "") != "":
            raw = (environ[spec.env], f"env {spec.env}")
        elif lowered in git_values:
            value, scope = git_values[lowered]
            raw = (value, f"git config ({scope})")
        if raw is not None:
            try:
                values[lowered] = Setting(spec.key, spec.convert(raw[0]), raw[1])
            except (ValueError, IndexError) as exc:
                from_env = raw[1].startswith("env")
                error = ConfigError(
                    f"{spec.env if from_env else spec.key} = {raw[0]!r} is not valid: {exc}",
                    f"fix it, or unset it ({'unset ' + spec.env if from_env else 'git config --unset ' + spec.key})",
                )
                values[lowered] = Setting(spec.key, spec.default, raw[1], raw=raw[0], error=error)
        elif workspace_defaults.get(spec.key) is not None:
            values[lowered] = Setting(spec.key, workspace_defaults[spec.key], workspace_label)
        else:
            values[lowered] = Setting(spec.key, spec.default, "default")
    unknown = {key: scope for key, (_, scope) in git_values.items() if key not in SPEC_BY_KEY}
    return Settings(values, unknown)
