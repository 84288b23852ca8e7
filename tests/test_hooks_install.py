"""`cfd hooks install | uninstall | status` against real repositories, hooks firing for real."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Clone, Scenario
from test_hooks_runtime import M, cfd, manifest, pending, publish

from cfd.hooks.runtime import HOOK_NAMES
from cfd.hooks.shim import SHIM_VERSION, read_shim, render_shim

PY = sys.executable


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return path


def foreign_logger(path: Path, log: Path, exit_code: int = 0) -> Path:
    """A hook of someone else's: logs its name, argv and stdin."""
    return executable(
        path,
        f'#!/bin/sh\n{{ echo "{path.name} $*"; cat; }} >> "{log}"\nexit {exit_code}\n',
    )


@pytest.fixture
def team(scenario: Scenario, cfd_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    for key in ("CFD_MODELS_DIR", "CFD_INDEX"):
        monkeypatch.setenv(key, cfd_env[key])
    monkeypatch.setenv("CFD_ON_PULL", "defer")
    scenario.seed({"pyproject.toml": manifest(), "README.md": "hello\n"})
    return scenario.clone("alice"), scenario.clone("bob")


def hooks_dir(clone: Clone) -> Path:
    return clone.path / ".git" / "hooks"


def install(clone: Clone, *args: str) -> subprocess.CompletedProcess[str]:
    return cfd("hooks", "install", "--python", PY, *args, cwd=clone.path)


def status_json(clone: Clone) -> dict[str, str]:
    result = cfd("hooks", "status", "--json", cwd=clone.path)
    return {h["hook"]: h["state"] for h in json.loads(result.stdout)["hooks"]}


def test_install_is_idempotent_and_status_reports_installed(team):
    _, bob = team
    assert status_json(bob) == {hook: "missing" for hook in HOOK_NAMES}
    first = install(bob)
    assert first.returncode == 0, first.stderr
    contents = {hook: (hooks_dir(bob) / hook).read_bytes() for hook in HOOK_NAMES}
    second = install(bob)
    assert second.returncode == 0 and "up to date" in second.stdout
    assert {hook: (hooks_dir(bob) / hook).read_bytes() for hook in HOOK_NAMES} == contents
    assert not list(hooks_dir(bob).glob("*.legacy"))
    assert status_json(bob) == {hook: "installed" for hook in HOOK_NAMES}
    assert cfd("hooks", "status", cwd=bob.path).returncode == 0
    assert bob.is_clean()


def test_foreign_post_merge_hook_still_runs_and_survives_uninstall(team, tmp_path):
    alice, bob = team
    log = tmp_path / "foreign.log"
    original = foreign_logger(hooks_dir(bob) / "post-merge", log)
    before = original.read_bytes()
    assert status_json(bob)["post-merge"] == "foreign"
    installed = install(bob)
    assert "post-merge.legacy" in installed.stdout
    assert (hooks_dir(bob) / "post-merge.legacy").read_bytes() == before
    a = M(30)
    publish(alice, manifest(a))
    assert bob.pull().returncode == 0
    assert log.read_text().splitlines()[0] == "post-merge 0"  # ran, with git's arguments
    assert a.hash in pending(bob)  # and ours too
    removed = cfd("hooks", "uninstall", cwd=bob.path)
    assert removed.returncode == 0
    assert (hooks_dir(bob) / "post-merge").read_bytes() == before
    assert os.access(hooks_dir(bob) / "post-merge", os.X_OK)
    assert not (hooks_dir(bob) / "post-merge.legacy").exists()
    assert not (hooks_dir(bob) / "post-checkout").exists()
    assert status_json(bob)["post-merge"] == "foreign"


def test_a_failing_legacy_post_checkout_fails_checkout_but_cfd_still_syncs(team, tmp_path):
    alice, bob = team
    foreign_logger(hooks_dir(bob) / "post-checkout", tmp_path / "log", exit_code=3)
    foreign_logger(hooks_dir(bob) / "post-merge", tmp_path / "log", exit_code=4)
    install(bob)
    c = M(31)
    alice.git("checkout", "-b", "feature")
    publish(alice, manifest(c))
    bob.git("fetch")
    switched = bob.checkout("origin/feature", check=False)
    assert switched.returncode != 0  # git honours post-checkout's status: so do we
    assert c.hash in pending(bob)
    alice.git("push", "origin", "feature:main")
    bob.git("checkout", "main", check=False)
    assert bob.pull().returncode == 0  # post-merge's status is ignored by git


def test_legacy_post_rewrite_gets_argv_and_stdin(team, tmp_path):
    alice, bob = team
    log = tmp_path / "rewrite.log"
    foreign_logger(hooks_dir(bob) / "post-rewrite", log)
    install(bob)
    old = bob.commit("local", {"notes.txt": "x\n"})
    bob.git("commit", "--amend", "-m", "local, amended")
    lines = log.read_text().splitlines()
    assert lines[0] == "post-rewrite amend"
    assert lines[1].split() == [old, bob.head()]


def test_older_cfd_hook_is_recognised_and_upgraded(team):
    _, bob = team
    old_text = render_shim("post-merge", "/old/venv/bin/python").replace(
        f"# cfd-hook-version: {SHIM_VERSION}", "# cfd-hook-version: 0"
    )
    executable(hooks_dir(bob) / "post-merge", old_text)
    assert status_json(bob)["post-merge"] == "outdated"
    install(bob)
    info = read_shim(hooks_dir(bob) / "post-merge")
    assert info is not None and info.current and info.python == PY
    assert not (hooks_dir(bob) / "post-merge.legacy").exists()  # ours: replaced, not kept


def test_a_moved_interpreter_shows_as_outdated(team, tmp_path):
    _, bob = team
    cfd("hooks", "install", "--python", str(tmp_path / "gone"), cwd=bob.path)
    assert set(status_json(bob).values()) == {"outdated"}


def test_foreign_hook_and_legacy_both_present_is_a_conflict_left_untouched(team, tmp_path):
    _, bob = team
    hook = foreign_logger(hooks_dir(bob) / "post-merge", tmp_path / "a")
    legacy = foreign_logger(hooks_dir(bob) / "post-merge.legacy", tmp_path / "b")
    texts = hook.read_text(), legacy.read_text()
    result = install(bob)
    assert result.returncode == 1 and "by hand" in result.stdout
    assert (hook.read_text(), legacy.read_text()) == texts


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_core_hooks_path(team, tmp_path, kind):
    alice, bob = team
    if kind == "relative":
        bob.git("config", "core.hooksPath", ".githooks")
        where = bob.path / ".githooks"
    else:
        where = tmp_path / "shared hooks"
        bob.git("config", "core.hooksPath", str(where))
    installed = install(bob)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert read_shim(where / "post-merge") is not None
    assert not (hooks_dir(bob) / "post-merge").exists()
    assert status_json(bob) == {hook: "installed" for hook in HOOK_NAMES}
    a = M(32)
    publish(alice, manifest(a))
    assert bob.pull().returncode == 0
    assert a.hash in pending(bob)
    assert bob.is_clean()  # the shims in .githooks are excluded, not untracked noise
    cfd("hooks", "uninstall", cwd=bob.path)
    assert not (where / "post-merge").exists()
    assert bob.is_clean()


def make_husky(clone: Clone) -> Path:
    """husky v9's layout: .husky/_/<hook> sources .husky/_/h, which runs .husky/<hook>."""
    generated = clone.path / ".husky" / "_"
    executable(
        generated / "h",
        '#!/bin/sh\nn=$(basename "$0"); s=$(dirname "$(dirname "$0")")/$n\n[ ! -f "$s" ] && exit 0\nsh -e "$s" "$@"\n',
    )
    for hook in ("pre-commit", *HOOK_NAMES):
        executable(generated / hook, '#!/bin/sh\n. "$(dirname "$0")/h"\n')
    clone.git("config", "core.hooksPath", ".husky/_")
    return generated


def test_hooks_path_owned_by_husky_is_reported_with_how_to_chain(team):
    alice, bob = team
    generated = make_husky(bob)
    before = {p.name: p.read_bytes() for p in generated.iterdir()}
    result = install(bob)
    assert result.returncode == 1
    assert "husky" in result.stdout and "cfd did not write there" in result.stdout
    assert {p.name: p.read_bytes() for p in generated.iterdir()} == before
    assert status_json(bob)["post-merge"] == "foreign"
    # The user follows the advice: one line in .husky/<hook> each.
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("cfd_hook=")]
    assert len(lines) == len(HOOK_NAMES)
    for hook, line in zip(HOOK_NAMES, lines):
        (bob.path / ".husky" / hook).write_text(line + "\n")
    assert status_json(bob) == {hook: "chained" for hook in HOOK_NAMES}
    a = M(33)
    publish(alice, manifest(a))
    assert bob.pull().returncode == 0
    assert a.hash in pending(bob)


def test_install_force_writes_into_a_foreign_hooks_path(team):
    _, bob = team
    generated = make_husky(bob)
    assert install(bob, "--force").returncode == 0
    assert read_shim(generated / "post-merge") is not None
    assert (generated / "post-merge.legacy").exists()


def test_hooks_bypassed_by_a_later_hooks_path(team, tmp_path):
    _, bob = team
    install(bob)
    bob.git("config", "core.hooksPath", str(tmp_path / "elsewhere"))
    assert set(status_json(bob).values()) == {"bypassed"}
    assert cfd("hooks", "status", cwd=bob.path).returncode == 1


def test_install_points_at_repair_for_what_is_already_missing(team):
    _, bob = team
    bob.commit("models", {"pyproject.toml": manifest(M(34), M(35, "optional"))})
    result = install(bob)
    assert result.returncode == 0
    assert "2 model(s)" in result.stdout and "`cfd repair`" in result.stdout


def test_global_install_uses_the_template_dir_and_uninstalls(team, _isolated_env):
    _, bob = team
    template = _isolated_env / "git-template"  # conftest's init.templateDir
    result = cfd("hooks", "install", "--global", "--python", PY, cwd=bob.path)
    assert result.returncode == 0, result.stderr
    assert all(read_shim(template / "hooks" / hook) for hook in HOOK_NAMES)
    assert "New clones get the hooks" in cfd("hooks", "status", cwd=bob.path).stdout
    cfd("hooks", "uninstall", "--global", cwd=bob.path)
    assert not any((template / "hooks" / hook).exists() for hook in HOOK_NAMES)


def test_global_install_without_a_template_dir_configures_one(team, monkeypatch, tmp_path):
    _, bob = team
    bob.git("config", "--global", "--unset", "init.templateDir")
    assert cfd("hooks", "install", "--global", "--python", PY, cwd=bob.path).returncode == 0
    configured = bob.git("config", "--global", "init.templateDir").stdout.strip()
    assert configured.endswith("cfd/git-template")
    assert read_shim(Path(configured) / "hooks" / "post-checkout") is not None
    cfd("hooks", "uninstall", "--global", cwd=bob.path)
    assert bob.git("config", "--global", "init.templateDir", check=False).returncode == 1


def test_uninstall_without_hooks_changes_nothing(team, tmp_path):
    _, bob = team
    hook = foreign_logger(hooks_dir(bob) / "post-merge", tmp_path / "log")
    text = hook.read_text()
    result = cfd("hooks", "uninstall", cwd=bob.path)
    assert result.returncode == 0 and "no cfd hooks" in result.stdout
    assert hook.read_text() == text


def test_shim_is_posix_sh_and_survives_odd_interpreter_paths(team, tmp_path):
    alice, bob = team
    for hook in HOOK_NAMES:
        checked = subprocess.run(["sh", "-n"], input=render_shim(hook, "/x"), text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr
    odd = tmp_path / "it's a dir" / "python"
    executable(odd, f'#!/bin/sh\nexec "{PY}" "$@"\n')
    assert install(bob).returncode == 0
    cfd("hooks", "install", "--python", str(odd), cwd=bob.path)
    assert read_shim(hooks_dir(bob) / "post-merge").python == str(odd)
    a = M(36)
    publish(alice, manifest(a))
    assert bob.pull().returncode == 0
    assert a.hash in pending(bob)


def test_hook_run_is_hidden_and_works_from_path(team):
    alice, bob = team
    assert "hook-run" not in cfd("--help", cwd=bob.path).stdout
    a = M(37)
    before = bob.head()
    publish(alice, manifest(a))
    bob.pull()  # no hooks installed: nothing recorded
    assert pending(bob) == {}
    ran = cfd("hook-run", "post-checkout", before, bob.head(), "1", cwd=bob.path)
    assert ran.returncode == 0, ran.stderr
    assert a.hash in pending(bob)


def test_status_says_when_hooks_are_turned_off(team):
    _, bob = team
    install(bob)
    bob.git("config", "cfd.hooks.enabled", "false")
    shown = cfd("hooks", "status", cwd=bob.path)
    assert "cfd.hooks.enabled is false" in shown.stdout
    assert json.loads(cfd("hooks", "status", "--json", cwd=bob.path).stdout)["enabled"] is False


def test_shim_passes_on_exactly_the_legacy_post_checkout_status(team, tmp_path):
    _, bob = team
    foreign_logger(hooks_dir(bob) / "post-checkout", tmp_path / "log", exit_code=3)
    foreign_logger(hooks_dir(bob) / "post-merge", tmp_path / "log", exit_code=3)
    install(bob)
    head = bob.head()
    checkout = subprocess.run([str(hooks_dir(bob) / "post-checkout"), head, head, "1"], cwd=bob.path)
    merge = subprocess.run([str(hooks_dir(bob) / "post-merge"), "0"], cwd=bob.path)
    assert (checkout.returncode, merge.returncode) == (3, 0)


@pytest.mark.parametrize("action", ["install", "uninstall", "status"])
def test_outside_a_repository_one_clear_line(tmp_path, action):
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    result = cfd("hooks", action, cwd=outside)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"cfd: error: {outside} is not inside a git repository",
        "hint: run this inside a clone of the environment (its .cec folder), or pass --env PATH",
    ]


@pytest.mark.parametrize("action", ["install", "uninstall", "status"])
def test_each_hooks_action_has_a_description(tmp_path, action):
    result = cfd("hooks", action, "--help", cwd=tmp_path)
    assert result.returncode == 0
    description = result.stdout.split("\n\n")[1]
    assert not description.startswith(("options:", "positional")) and len(description.split()) > 10
