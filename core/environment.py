"""Finding the environment (.cec repo, pyproject.toml), its workspace and settings.

An environment is a git repository whose pyproject.toml has a `[tool.comfygit]`
(ComfyGit) or `[tool.comfydock]` (ComfyDock) table: an `environments/<name>/.cec`,
or any repo of that shape. The models directory and index come from settings, else
from the workspace of that dialect (`$COMFYGIT_HOME` / `$COMFYDOCK_HOME`, the
workspace around the env, or `~/comfygit` / `~/comfydock`), else the index defaults
to `<modelsDir>/.cfd/models.db` (ComfyGit: `.cfd/comfygit-models.db`, so the two
dialects' hashes never share a file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import dialect as dialects
from .dialect import COMFYDOCK, Dialect
from .errors import ConfigError, EnvironmentNotFound
from .settings import Settings, resolve_settings
from .state import clone_state, models_state

PYPROJECT = "pyproject.toml"


class Workspace:
    __slots__ = ("root", "config", "dialect")

    def __init__(self, root: Path, config: Mapping[str, Any], dialect: Dialect = COMFYDOCK) -> None:
        self.root = root
        self.config = config
        self.dialect = dialect

    def _section(self, name: str) -> Mapping[str, Any]:
        section = self.config.get(name)
        return section if isinstance(section, dict) else {}  # a hand-edited file may hold anything

    @property
    def models_dir(self) -> Path:
        configured = self._section("global_model_directory").get("path")
        return Path(configured) if isinstance(configured, str) and configured else self.root / "models"

    @property
    def index_path(self) -> Path:
        return self.root / self.dialect.cache_dir / "models.db"

    @property
    def civitai_token(self) -> str | None:
        token = self._section("api_credentials").get("civitai_token")
        return token if isinstance(token, str) and token else None

    @property
    def hf_token(self) -> str | None:
        """ComfyGit 0.7 keeps a legacy plaintext `huggingface_token` here until it migrates it."""
        token = self._section("api_credentials").get("huggingface_token")
        return token if isinstance(token, str) and token.strip() else None


class Environment:
    """Everything a command needs to know about where things are."""

    __slots__ = ("repo", "git_dir", "settings", "workspace", "dialect")

    def __init__(self, repo: Path, git_dir: Path, settings: Settings, workspace: Workspace | None,
                 dialect: Dialect = COMFYDOCK) -> None:
        self.repo = repo  # the .cec git work tree
        self.git_dir = git_dir  # per-clone (per-worktree) git directory: marker and state live here
        self.settings = settings
        self.workspace = workspace
        self.dialect = dialect  # ComfyDock when the file has neither table yet

    @property
    def pyproject(self) -> Path:
        return self.repo / PYPROJECT

    @property
    def models_dir(self) -> Path:
        value = self.settings["cfd.modelsDir"]
        if value is None:
            raise ConfigError(
                "no models directory configured",
                f"set one with `git config cfd.modelsDir /path/to/models` or CFD_MODELS_DIR, or use a {self.dialect.title} workspace",
            )
        return Path(value)

    @property
    def index_path(self) -> Path:
        value = self.settings["cfd.index"]
        return Path(value) if value is not None else models_state(self.models_dir).default_index_for(self.dialect.name)

    @property
    def state_dir(self) -> Path:
        return clone_state(self.git_dir).dir

    @property
    def civitai_token(self) -> str | None:
        return self.workspace.civitai_token if self.workspace else None

    @property
    def hf_token(self) -> str | None:
        return self.workspace.hf_token if self.workspace else None


def require_models_dir(models_dir: str | os.PathLike[str]) -> Path:
    """The models dir, which must exist: cfd never creates it.

    A mistyped path, or a drive that is not mounted, would otherwise be created on the
    system disk (and filled by the downloads), or look like a folder that lost every model.
    """
    path = Path(models_dir)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(
            f"the models directory {path} {what}",
            "create it or mount it, or fix cfd.modelsDir / CFD_MODELS_DIR (cfd never creates it)",
        )
    return path


def load_workspace(root: Path, dialect: Dialect = COMFYDOCK) -> Workspace | None:
    config_file = root / ".metadata" / "workspace.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {config_file}: {exc}", "fix or remove the workspace file") from None
    return Workspace(root, config if isinstance(config, dict) else {}, dialect)


def find_workspace(repo: Path, environ: Mapping[str, str], dialect: Dialect = COMFYDOCK) -> Workspace | None:
    home = environ.get(dialect.home_env)
    if home:
        return load_workspace(Path(home).expanduser(), dialect)
    # <workspace>/environments/<name>/.cec
    for parent in repo.parents:
        if parent.name == "environments":
            found = load_workspace(parent.parent, dialect)
            if found:
                return found
            break
    return load_workspace(Path.home() / dialect.default_home, dialect)


def dialect_of(repo: Path, data: bytes | None = None) -> Dialect:
    """The environment's dialect, from its pyproject.toml (`data`, when already read; ComfyDock
    when it has neither table, or cannot be read: the manifest reader reports that); both
    tables: ManifestError."""
    try:
        data = (repo / PYPROJECT).read_bytes() if data is None else data
    except OSError:
        return COMFYDOCK
    return dialects.detect(data, str(repo / PYPROJECT)) or COMFYDOCK


def git_dir_of(repo: Path) -> Path:
    """The per-clone git dir, without starting git (a `.git` file points at it)."""
    dot_git = repo / ".git"
    if dot_git.is_file():
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text[len("gitdir:") :].strip())
            return target if target.is_absolute() else (repo / target).resolve()
    return dot_git


def find_repo(start: Path) -> Path:
    """The environment repo containing `start` (or `start/.cec`).

    From inside `environments/<name>/ComfyUI/` (a git clone of ComfyUI, which has
    a pyproject.toml of its own) the environment is the sibling `.cec/`: a repo
    whose pyproject.toml has no [tool.comfydock] table is taken only when no
    `.cec/` is found further up.
    """
    return _locate(start)[0]


def _locate(start: Path) -> tuple[Path, bytes | None]:
    """find_repo's answer, with the pyproject.toml it read on the way (None: not read)."""
    start = start.expanduser().resolve()
    if not start.exists():
        raise EnvironmentNotFound(f"{start} does not exist", "pass --env with the path of a ComfyGit or ComfyDock environment")
    fallback: tuple[Path, bytes | None] | None = None
    inside_a_repo = False
    for candidate in [start, *start.parents]:
        if (candidate / ".cec" / PYPROJECT).is_file():
            return candidate / ".cec", None
        is_repo = (candidate / ".git").exists()
        if not inside_a_repo and is_repo and (candidate / PYPROJECT).is_file():
            data = _read(candidate / PYPROJECT)
            if data is not None and (b"tool.comfydock" in data or b"tool.comfygit" in data):
                return candidate, data
            fallback = candidate, data
        inside_a_repo = inside_a_repo or is_repo  # never take an enclosing repo's pyproject.toml
    if fallback is not None:
        return fallback
    raise EnvironmentNotFound(
        f"no ComfyGit or ComfyDock environment found at or above {start}",
        "run cfd inside an environment (a git repo with pyproject.toml, or its parent holding .cec/) or pass --env PATH",
    )


def _read(pyproject: Path) -> bytes | None:
    try:
        return pyproject.read_bytes()
    except OSError:
        return None


def open_environment(
    start: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Environment:
    environ = os.environ if environ is None else environ
    repo, data = _locate(Path(start) if start else Path.cwd())
    dialect = dialect_of(repo, data)  # the file find_repo read, not read again
    workspace = find_workspace(repo, environ, dialect)
    workspace_defaults: dict[str, Any] = {}
    if workspace is not None:
        workspace_defaults = {"cfd.modelsDir": workspace.models_dir, "cfd.index": workspace.index_path}
    settings = resolve_settings(repo, flags, workspace_defaults, environ, f"{dialect.title} workspace")
    return Environment(repo=repo, git_dir=git_dir_of(repo), settings=settings, workspace=workspace, dialect=dialect)
