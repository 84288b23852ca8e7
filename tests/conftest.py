"""Test isolation shared by every test: no test may see or touch the developer's state.

Every test gets its own HOME, XDG dirs and git global config, and loses every variable
through which the outer world could steer cfd, git, Hugging Face or Civitai.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# tests/ has no __init__.py; make `from helpers.gitscenario import Scenario` work under
# any import mode, not only pytest's default "prepend".
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from helpers.gitscenario import Scenario  # noqa: E402

# Exact names removed from the environment (CFD_* and GIT_* are removed by prefix).
_SCRUBBED = (
    "COMFYDOCK_HOME",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HOME",
    "HF_ENDPOINT",
    "CIVITAI_API_TOKEN",
    "CIVITAI_API_KEY",
    # A proxy would route the tests' loopback HTTP servers elsewhere.
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
)

# Commits must differ between calls, so no author/committer date is pinned here.
_GITCONFIG = """\
[user]
\tname = cfd tests
\temail = tests@cfd.invalid
[init]
\tdefaultBranch = main
\ttemplateDir = {template_dir}
[protocol "file"]
\tallow = always
[pull]
\trebase = false
[core]
\teditor = true
[commit]
\tgpgsign = false
[advice]
\tdetachedHead = false
"""


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Point HOME, XDG dirs and git's global config at a fresh temp dir.

    A separate dir from tmp_path, so tests own their tmp_path entirely.
    """
    base = tmp_path_factory.mktemp("isolated")
    home = base / "home"
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": base / "xdg-config",
        "XDG_CACHE_HOME": base / "xdg-cache",
        "XDG_DATA_HOME": base / "xdg-data",
        "XDG_STATE_HOME": base / "xdg-state",
    }
    for d in dirs.values():
        d.mkdir()
    # An empty template dir: clones get no sample hooks, and no hooks from the host.
    template_dir = base / "git-template"
    template_dir.mkdir()
    gitconfig = home / ".gitconfig"
    gitconfig.write_text(_GITCONFIG.format(template_dir=template_dir.as_posix()))

    # GIT_* covers GIT_DIR/GIT_WORK_TREE and also GIT_INDEX_FILE, GIT_AUTHOR_DATE, ...
    # which leak in when pytest runs from inside a git hook.
    for name in list(os.environ):
        if name.startswith(("CFD_", "GIT_")) or name in _SCRUBBED:
            monkeypatch.delenv(name)
    for name, d in dirs.items():
        monkeypatch.setenv(name, str(d))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")

    restore = _isolate_libgit2(home, dirs["XDG_CONFIG_HOME"] / "git", base / "no-system")
    try:
        yield base
    finally:
        restore()


def _isolate_libgit2(home: Path, xdg_git: Path, system: Path) -> Callable[[], None]:
    """libgit2 computed its config search paths from the real HOME when it loaded and
    ignores GIT_CONFIG_GLOBAL/NOSYSTEM: repoint them so in-process pygit2 sees our config.
    Returns the function that restores them (SearchPathList has no .get for monkeypatch)."""
    try:
        import pygit2
        from pygit2.enums import ConfigLevel
    except ImportError:  # pragma: no cover - pygit2 is a hard dependency
        return lambda: None

    system.mkdir()
    search_path = pygit2.settings.search_path
    wanted = {
        ConfigLevel.GLOBAL: home,
        ConfigLevel.XDG: xdg_git,
        ConfigLevel.SYSTEM: system,
        ConfigLevel.PROGRAMDATA: system,
    }
    saved = {level: search_path[level] for level in wanted}
    for level, path in wanted.items():
        search_path[level] = str(path)

    def restore() -> None:
        for level, old in saved.items():
            search_path[level] = old

    return restore


@pytest.fixture
def scenario(tmp_path: Path) -> Scenario:
    """An upstream bare repo at tmp_path/repos/upstream.git; clones beside it."""
    return Scenario(tmp_path / "repos")


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    return d


@pytest.fixture
def cfd_env(_isolated_env: Path, tmp_path: Path, models_dir: Path) -> dict[str, str]:
    """A full environment for `cfd` subprocesses (also fine as a per-call env overlay).

    Private networks are allowed because the tests' HTTP servers listen on loopback.
    """
    index = tmp_path / "comfydock_cache" / "models.db"
    index.parent.mkdir()
    return {
        **os.environ,
        "CFD_MODELS_DIR": str(models_dir),
        "CFD_INDEX": str(index),
        "CFD_ALLOW_PRIVATE_NETWORKS": "true",
    }


@pytest.fixture(params=["comfydock", "comfygit"])
def dialect(request: pytest.FixtureRequest) -> str:
    """The manifest dialect a shared test runs under (ComfyDock 1.0.x, ComfyGit 0.7.x)."""
    return request.param


@pytest.fixture
def both_dialects(dialect: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per dialect: the manifest helpers write that dialect, and the hash
    is that dialect's, unless a test names one (tests/helpers/manifest.py's CURRENT)."""
    from helpers import manifest

    monkeypatch.setitem(manifest.CURRENT, "dialect", dialect)
    return dialect
