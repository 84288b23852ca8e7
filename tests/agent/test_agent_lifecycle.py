"""`cfd agent start|stop|status|run`, one agent per models dir, and the service files."""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
import time
from pathlib import Path

from cfd.agent.lock import is_locked
from cfd.agent.paths import agent_paths
from cfd.agent.statusfile import read_status
from cfd.cli.main import main
from test_agent_support import agent_env, agents, cfd, make_env_repo, wait_for  # noqa: F401


def test_two_starts_give_one_agent_and_stop_ends_it(scenario, models_dir, agent_env):
    repo = make_env_repo(scenario)
    paths = agent_paths(models_dir)
    argv = [sys.executable, "-m", "cfd.cli.main", "agent", "start"]
    starts = [subprocess.Popen(argv, cwd=repo, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=30)[0] for p in starts]
        assert [p.returncode for p in starts] == [0, 0]
        assert sorted("started" in out for out in outputs) == [False, True], outputs
        assert any("already running" in out for out in outputs)
        assert is_locked(paths.lock)
        status = read_status(paths.status)
        assert status["state"] == "ready" and status["envs"] == [str(repo)]
        again = cfd("agent", "start", cwd=repo)
        assert "already running (pid %d)" % status["pid"] in again.stdout

        shown = cfd("agent", "status", cwd=repo)
        assert shown.returncode == 0 and f"running (pid {status['pid']})" in shown.stdout
        assert str(paths.log) in shown.stdout
        # `cfd status` tells the truth about the agent too.
        overall = cfd("status", cwd=repo)
        assert f"Agent: running (pid {status['pid']}), idle." in overall.stdout
        overall_json = json.loads(cfd("status", "--json", cwd=repo).stdout)
        assert overall_json["agent"]["running"] is True and overall_json["agent"]["pid"] == status["pid"]
    finally:
        stopped = cfd("agent", "stop", cwd=repo)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not is_locked(paths.lock)
    assert read_status(paths.status)["state"] == "stopped"
    assert "not running" in cfd("agent", "stop", cwd=repo).stdout
    after = cfd("agent", "status", cwd=repo)
    assert after.returncode == 1 and "not running" in after.stdout
    from cfd.agent.control import agent_status_for

    summary = agent_status_for(models_dir)
    assert summary["running"] is False and summary["state"] == "stopped"
    assert "Agent:" not in cfd("status", cwd=repo).stdout


def test_a_missing_models_dir_is_a_config_error(scenario, agent_env, tmp_path, monkeypatch):
    repo = make_env_repo(scenario)
    monkeypatch.setenv("CFD_MODELS_DIR", str(tmp_path / "nope"))
    result = cfd("agent", "start", cwd=repo)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_run_refuses_a_second_agent_for_the_same_models_dir(scenario, models_dir, agent_env, agents):
    repo = make_env_repo(scenario)
    first = agents(repo, models_dir)
    second = cfd("agent", "run", cwd=repo, timeout=30)
    assert second.returncode == 3
    assert f"already running (pid {first.proc.pid})" in second.stdout


def test_a_second_agent_with_another_state_dir_is_refused_too(scenario, models_dir, agent_env, agents, tmp_path):
    """Issue 10: the life lock lived in the per-user state dir, so an agent started with
    another XDG_STATE_HOME (or by another user) ran beside the first on the same models dir."""
    repo = make_env_repo(scenario)
    first = agents(repo, models_dir)
    other_state = tmp_path / "other-state"
    env = {**os.environ, "XDG_STATE_HOME": str(other_state)}
    for command in ("run", "start"):
        second = subprocess.run([sys.executable, "-m", "cfd.cli.main", "agent", command], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 3, (command, second.stdout, second.stderr)
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert f"another agent (pid {first.proc.pid}," in second.stderr and str(models_dir) in second.stderr
    assert first.proc.poll() is None and first.status().get("state") == "ready"


def test_sigterm_stops_within_seconds_and_sigint_too(scenario, models_dir, agent_env, agents):
    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    assert agent.stop() == 0 and agent.stop_seconds < 3
    agent = agents(repo, models_dir)
    agent.proc.send_signal(2)
    assert agent.proc.wait(5) == 0
    assert agent.status()["state"] == "stopped"


def test_extra_environments_are_served_and_listed(scenario, models_dir, agent_env):
    repo = make_env_repo(scenario)
    other = make_env_repo(scenario, name="bob")
    try:
        started = cfd("agent", "start", "--env", str(other), cwd=repo)
        assert started.returncode == 0, started.stderr
        status = read_status(agent_paths(models_dir).status)
        assert status["envs"] == [str(repo), str(other)]
        shown = cfd("agent", "status", "--json", cwd=repo)
        assert '"running": true' in shown.stdout
    finally:
        cfd("agent", "stop", cwd=repo)


def test_environments_with_different_models_dirs_need_two_agents(scenario, models_dir, agent_env, tmp_path):
    repo = make_env_repo(scenario)
    other = make_env_repo(scenario, name="bob")
    subprocess.run(["git", "config", "cfd.modelsDir", str(tmp_path / "elsewhere")], cwd=other, check=True)
    env = {**os.environ}
    env.pop("CFD_MODELS_DIR")
    (repo / ".git" / "config").open("a").write(f"[cfd]\n\tmodelsDir = {models_dir}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cfd.cli.main", "agent", "start", "--env", str(other)],
        cwd=repo, env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "one agent serves one models directory" in result.stderr


def test_install_and_uninstall_systemd_unit(scenario, models_dir, agent_env, monkeypatch, capsys):
    repo = make_env_repo(scenario)
    monkeypatch.chdir(repo)
    assert main(["agent", "install-service", "--kind", "systemd"]) == 0
    unit = Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user" / f"cfd-agent-{agent_paths(models_dir).key}.service"
    text = unit.read_text()
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    command = exec_line.removeprefix("ExecStart=").split()
    assert os.path.isabs(command[0]) and command[1:] == ["agent", "run", "--env", str(repo)]
    assert f"Environment=CFD_MODELS_DIR={models_dir}" in text
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text
    out = capsys.readouterr().out
    assert f"systemctl --user enable --now {unit.name}" in out
    assert main(["agent", "uninstall-service", "--kind", "systemd"]) == 0
    assert not unit.exists()
    assert "Removed" in capsys.readouterr().out
    assert main(["agent", "uninstall-service", "--kind", "systemd"]) == 0
    assert "No service file" in capsys.readouterr().out


def test_install_and_uninstall_launchd_plist(scenario, models_dir, agent_env, monkeypatch, capsys):
    repo = make_env_repo(scenario)
    monkeypatch.chdir(repo)
    assert main(["agent", "install-service", "--kind", "launchd"]) == 0
    key = agent_paths(models_dir).key
    plist_path = Path(os.environ["HOME"]) / "Library" / "LaunchAgents" / f"dev.cfd.agent.{key}.plist"
    plist = plistlib.loads(plist_path.read_bytes())
    assert plist["Label"] == f"dev.cfd.agent.{key}"
    assert os.path.isabs(plist["ProgramArguments"][0])
    assert plist["ProgramArguments"][1:] == ["agent", "run", "--env", str(repo)]
    assert plist["EnvironmentVariables"]["CFD_MODELS_DIR"] == str(models_dir)
    assert plist["RunAtLoad"] is True
    assert "launchctl bootstrap" in capsys.readouterr().out
    assert main(["agent", "uninstall-service", "--kind", "launchd"]) == 0
    assert not plist_path.exists()


def test_systemd_quoting_of_paths_with_spaces():
    from cfd.agent.service import systemd_unit

    text = systemd_unit(["/opt/my cfd/cfd", "agent", "run", "--env", "/x/100%"], {"CFD_X": "a b"}, Path("/m"))
    assert 'ExecStart="/opt/my cfd/cfd" agent run --env /x/100%%' in text
    assert 'Environment="CFD_X=a b"' in text


def test_status_outside_an_environment_lists_every_agent(scenario, models_dir, agent_env, agents, tmp_path):
    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    elsewhere = tmp_path / "not-an-env"
    elsewhere.mkdir()
    shown = cfd("agent", "status", cwd=elsewhere)
    assert shown.returncode == 0 and f"running (pid {agent.proc.pid})" in shown.stdout
    assert str(models_dir) in shown.stdout


def test_agent_stops_when_its_models_dir_is_removed(scenario, models_dir, agent_env, agents):
    import shutil

    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    shutil.rmtree(models_dir)
    assert agent.proc.wait(5) == 0
    assert "is gone" in agent.paths.log.read_text()
