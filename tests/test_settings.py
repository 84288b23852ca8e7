"""Settings and the environment: git config, CFD_* variables, the ComfyDock workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfd.core.environment import find_repo, open_environment
from cfd.core.errors import ConfigError, EnvironmentNotFound
from cfd.core.settings import SPECS, git_config_text, resolve_settings, suggest_key
from helpers.gitscenario import run_git

PYPROJECT = '[project]\nname = "env"\n\n[tool.comfydock]\ncomfyui_version = "v0.3.40"\n'


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    run_git("init", "-q", cwd=path)
    (path / "pyproject.toml").write_text(PYPROJECT)
    return path


def make_workspace(root: Path, config: object, name: str = "studio") -> Path:
    """A ComfyDock workspace with one environment; returns the env's .cec repo."""
    (root / ".metadata").mkdir(parents=True)
    workspace_json = root / ".metadata" / "workspace.json"
    if isinstance(config, bytes):
        workspace_json.write_bytes(config)
    else:
        workspace_json.write_text(config if isinstance(config, str) else json.dumps(config))
    return make_repo(root / "environments" / name / ".cec")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "env")


# --- precedence -----------------------------------------------------------------------


def test_defaults(repo: Path) -> None:
    settings = resolve_settings(repo, environ={})
    assert settings["cfd.models"] == "required"
    assert settings["cfd.onPull"] == "download"
    assert settings["cfd.jobs"] == 4
    assert settings["cfd.allowPrivateNetworks"] is False
    assert settings["cfd.modelsDir"] is None
    assert all(s.source == "default" for s in settings.all())


def test_interface_contract_names() -> None:
    pairs = {(spec.key, spec.env) for spec in SPECS}
    assert {
        ("cfd.modelsDir", "CFD_MODELS_DIR"),
        ("cfd.index", "CFD_INDEX"),
        ("cfd.models", "CFD_MODELS"),
        ("cfd.onPull", "CFD_ON_PULL"),
        ("cfd.jobs", "CFD_JOBS"),
        ("cfd.allowPrivateNetworks", "CFD_ALLOW_PRIVATE_NETWORKS"),
    } <= pairs


def test_git_config_local_over_global(repo: Path) -> None:
    run_git("config", "--global", "cfd.models", "all", cwd=repo)
    run_git("config", "--global", "cfd.jobs", "2", cwd=repo)
    run_git("config", "cfd.models", "skip", cwd=repo)
    settings = resolve_settings(repo, environ={})
    assert settings.setting("cfd.models").value == "skip"
    assert settings.setting("cfd.models").source == "git config (local)"
    assert (settings["cfd.jobs"], settings.setting("cfd.jobs").source) == (2, "git config (global)")


def test_git_config_keys_are_case_insensitive(repo: Path) -> None:
    run_git("config", "cfd.onpull", "defer", cwd=repo)
    run_git("config", "cfd.ALLOWPRIVATENETWORKS", "yes", cwd=repo)
    settings = resolve_settings(repo, environ={})
    assert settings["cfd.onPull"] == "defer" and settings["cfd.allowPrivateNetworks"] is True


def test_git_boolean_shorthand_means_true(repo: Path) -> None:
    with open(repo / ".git" / "config", "a") as config:
        config.write("[cfd]\n\tallowPrivateNetworks\n")  # as `git config` documents booleans
    assert resolve_settings(repo, environ={})["cfd.allowPrivateNetworks"] is True


def test_environment_variable_over_git_config(repo: Path) -> None:
    run_git("config", "cfd.models", "skip", cwd=repo)
    settings = resolve_settings(repo, environ={"CFD_MODELS": "ALL", "CFD_ON_PULL": ""})
    assert (settings["cfd.models"], settings.setting("cfd.models").source) == ("all", "env CFD_MODELS")
    assert settings.setting("cfd.onPull").source == "default"  # an empty variable is unset


def test_flag_over_environment_variable(repo: Path) -> None:
    settings = resolve_settings(repo, flags={"cfd.models": "skip"}, environ={"CFD_MODELS": "all"})
    assert (settings["cfd.models"], settings.setting("cfd.models").source) == ("skip", "flag")


def test_paths_expand_the_home_directory(repo: Path) -> None:
    settings = resolve_settings(repo, environ={"CFD_MODELS_DIR": "~/models"})
    assert settings["cfd.modelsDir"] == Path.home() / "models"


# --- bad values: one line naming the setting, the value and the fix -------------------


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("CFD_MODELS", "some"),
        ("CFD_ON_PULL", "later"),
        ("CFD_JOBS", "0"),
        ("CFD_JOBS", "many"),
        ("CFD_JOBS", "2.5"),
        ("CFD_ALLOW_PRIVATE_NETWORKS", "maybe"),
        ("CFD_STALL_TIMEOUT", "-3"),
        ("CFD_STALL_TIMEOUT", "nan"),
        ("CFD_STALL_TIMEOUT", "soon"),
        ("CFD_AGENT_MAX_RATE", "fast"),
        ("CFD_AGENT_MAX_RATE", "infM"),
        ("CFD_MAX_UNKNOWN_SIZE", "0"),
        ("CFD_MAX_UNKNOWN_SIZE", "huge"),
        ("CFD_MAX_UNKNOWN_SIZE", "-1G"),
        ("CFD_HOOK_TIME_BUDGET", "0"),
        ("CFD_LOW_SPEED_LIMIT", "slow"),
        ("CFD_LOW_SPEED_TIME", "-1"),
    ],
)
def test_bad_environment_values(repo: Path, env: str, value: str) -> None:
    settings = resolve_settings(repo, environ={env: value})  # resolving never fails: only a reader does
    spec = next(spec for spec in SPECS if spec.env == env)
    with pytest.raises(ConfigError) as caught:
        settings[spec.key]
    message = caught.value.message
    assert message.startswith(f"{env} = {value!r} is not valid: expected")
    assert "\n" not in message and "int()" not in message and "float" not in message
    assert caught.value.hint == f"fix it, or unset it (unset {env})"
    assert [bad.key for bad in settings.problems()] == [spec.key]
    assert settings.setting(spec.key).raw == value


def test_bad_git_config_value_names_the_key(repo: Path) -> None:
    run_git("config", "cfd.jobs", "lots", cwd=repo)
    settings = resolve_settings(repo, environ={})
    assert settings["cfd.models"] == "required"  # the other settings still read
    with pytest.raises(ConfigError) as caught:
        settings["cfd.jobs"]
    assert caught.value.message.startswith("cfd.jobs = 'lots' is not valid")
    assert "git config --unset cfd.jobs" in (caught.value.hint or "")


def test_unknown_git_config_keys_are_kept_with_a_suggestion(repo: Path) -> None:
    run_git("config", "cfd.modelDir", "/data/models", cwd=repo)
    run_git("config", "cfd.colour", "blue", cwd=repo)
    settings = resolve_settings(repo, environ={})
    assert settings.unknown_keys == {"cfd.modeldir": "local", "cfd.colour": "local"}
    assert suggest_key("cfd.modeldir") == "cfd.modelsDir"
    assert suggest_key("cfd.onpul") == "cfd.onPull"
    assert suggest_key("cfd.colour") is None


@pytest.mark.parametrize(
    ("value", "text"), [(True, "true"), (False, "false"), (30.0, "30"), (0.5, "0.5"), (4, "4"), (None, None)]
)
def test_values_print_the_way_git_config_takes_them(value: object, text: str | None) -> None:
    assert git_config_text(value) == text


def test_good_unusual_values(repo: Path) -> None:
    settings = resolve_settings(repo, environ={"CFD_AGENT_MAX_RATE": "1.5M", "CFD_STALL_TIMEOUT": "0.5", "CFD_JOBS": " 8 "})
    assert settings["cfd.agent.maxRate"] == int(1.5 * 1024 * 1024)
    assert settings["cfd.stallTimeout"] == 0.5
    assert settings["cfd.jobs"] == 8


def test_size_and_speed_settings() -> None:
    settings = resolve_settings(None, environ={"CFD_MAX_UNKNOWN_SIZE": "1.5T", "CFD_LOW_SPEED_LIMIT": "0"})
    assert settings["cfd.maxUnknownSize"] == int(1.5 * 1024**4)
    assert settings["cfd.lowSpeedLimit"] == 0  # off, as curl without --speed-limit
    defaults = resolve_settings(None, environ={})
    assert defaults["cfd.maxUnknownSize"] == 64 * 1024**3 and defaults["cfd.hookTimeBudget"] == 300.0
    assert (defaults["cfd.lowSpeedLimit"], defaults["cfd.lowSpeedTime"]) == (1024, 30.0)
    assert resolve_settings(None, environ={"CFD_MAX_UNKNOWN_SIZE": "64GiB"})["cfd.maxUnknownSize"] == 64 * 1024**3


# --- finding the environment and its workspace ----------------------------------------


def test_environment_found_from_a_subdirectory(repo: Path) -> None:
    (repo / "workflows").mkdir()
    env = open_environment(repo / "workflows", environ={"CFD_MODELS_DIR": "/m"})
    assert env.repo == repo.resolve()
    assert env.pyproject == repo.resolve() / "pyproject.toml"
    assert env.git_dir == repo.resolve() / ".git"
    assert env.state_dir == repo.resolve() / ".git" / "cfd"


def test_environment_found_from_the_folder_holding_cec(tmp_path: Path) -> None:
    cec = make_repo(tmp_path / "studio" / ".cec")
    assert find_repo(tmp_path / "studio") == cec.resolve()


def test_no_environment_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentNotFound) as caught:
        open_environment(tmp_path, environ={})
    assert "no ComfyGit or ComfyDock environment found" in caught.value.message and "--env" in (caught.value.hint or "")
    with pytest.raises(EnvironmentNotFound):
        open_environment(tmp_path / "nope", environ={})


@pytest.mark.parametrize("comfyui_has_pyproject", [True, False])
def test_inside_the_comfyui_clone_the_environment_is_the_sibling_cec(tmp_path: Path, comfyui_has_pyproject: bool) -> None:
    cec = make_workspace(tmp_path / "ws", {})
    comfyui = cec.parent / "ComfyUI"
    (comfyui / "custom_nodes" / "some-pack").mkdir(parents=True)
    run_git("init", "-q", cwd=comfyui)
    if comfyui_has_pyproject:
        (comfyui / "pyproject.toml").write_text('[project]\nname = "ComfyUI"\nversion = "0.3.40"\n')
    env = open_environment(comfyui / "custom_nodes" / "some-pack", environ={})
    assert env.repo == cec.resolve()


def test_a_repo_without_comfydock_table_is_still_taken_when_nothing_else_is_found(tmp_path: Path) -> None:
    repo = tmp_path / "plain"
    repo.mkdir()
    run_git("init", "-q", cwd=repo)
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_repo(repo) == repo.resolve()


def test_git_repo_without_pyproject_does_not_climb_into_an_outer_one(repo: Path) -> None:
    inner = repo / "vendor" / "other"
    inner.mkdir(parents=True)
    run_git("init", "-q", cwd=inner)
    with pytest.raises(EnvironmentNotFound):
        find_repo(inner)


def test_worktree_git_dir_is_per_worktree(repo: Path, tmp_path: Path) -> None:
    run_git("add", "-A", cwd=repo)
    run_git("commit", "-q", "-m", "x", cwd=repo)
    run_git("worktree", "add", "-q", str(tmp_path / "wt"), cwd=repo)
    env = open_environment(tmp_path / "wt", environ={"CFD_MODELS_DIR": "/m"})
    assert env.git_dir == (repo / ".git" / "worktrees" / "wt").resolve()


def test_models_dir_must_be_configured_somewhere(repo: Path) -> None:
    env = open_environment(repo, environ={})
    with pytest.raises(ConfigError) as caught:
        env.models_dir  # noqa: B018
    assert "cfd.modelsDir" in (caught.value.hint or "") and "CFD_MODELS_DIR" in (caught.value.hint or "")


def test_index_defaults_beside_the_models(repo: Path, tmp_path: Path) -> None:
    env = open_environment(repo, environ={"CFD_MODELS_DIR": str(tmp_path / "m")})
    assert env.index_path == tmp_path / "m" / ".cfd" / "models.db"


def test_workspace_around_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "comfydock"
    cec = make_workspace(root, {"global_model_directory": {"path": str(tmp_path / "big" / "models")},
                                "api_credentials": {"civitai_token": "tok"}})
    env = open_environment(cec, environ={})
    assert env.workspace is not None and env.workspace.root == root
    assert env.models_dir == tmp_path / "big" / "models"
    assert env.index_path == root / "comfydock_cache" / "models.db"
    assert env.settings.setting("cfd.modelsDir").source == "ComfyDock workspace"
    assert env.civitai_token == "tok"


def test_comfydock_home_names_the_workspace(tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    (home / ".metadata").mkdir(parents=True)
    (home / ".metadata" / "workspace.json").write_text("{}")
    repo = make_repo(tmp_path / "standalone")
    env = open_environment(repo, environ={"COMFYDOCK_HOME": str(home)})
    assert env.workspace is not None and env.workspace.root == home
    assert env.models_dir == home / "models"  # ComfyDock's default models dir


def test_default_workspace_in_home(repo: Path) -> None:
    home_ws = Path.home() / "comfydock"
    (home_ws / ".metadata").mkdir(parents=True)
    (home_ws / ".metadata" / "workspace.json").write_text("{}")
    env = open_environment(repo, environ={})
    assert env.workspace is not None and env.workspace.root == home_ws


def test_settings_override_the_workspace(tmp_path: Path) -> None:
    cec = make_workspace(tmp_path / "ws", {})
    run_git("config", "cfd.modelsDir", str(tmp_path / "mine"), cwd=cec)
    env = open_environment(cec, environ={"CFD_INDEX": str(tmp_path / "i.db")})
    assert env.models_dir == tmp_path / "mine"
    assert env.index_path == tmp_path / "i.db"


@pytest.mark.parametrize(
    "config",
    [
        "{not json",
        '{"global_model_directory": "/models"}',
        '{"global_model_directory": {"path": 42}, "api_credentials": "secret"}',
        "[1, 2]",
        b'{"global_model_directory": {"path": "/m\xff"}}',
    ],
)
def test_odd_workspace_files_give_a_config_error_or_defaults(tmp_path: Path, config: str | bytes) -> None:
    cec = make_workspace(tmp_path / "ws", config)
    try:
        env = open_environment(cec, environ={})
        assert env.models_dir == tmp_path / "ws" / "models"  # wrong types: ComfyDock's defaults
        assert env.civitai_token is None
    except ConfigError as exc:
        assert "workspace.json" in exc.message and "\n" not in exc.message
