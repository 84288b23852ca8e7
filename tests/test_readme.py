"""The README's commands are real: read them out of the README and exercise them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cfd.core import __version__
from cfd.core.settings import SPECS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    found = []
    for block in code_blocks():
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command:
                found.append(command)
    return found


def cfd(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfd.cli.main", *args], capture_output=True, text=True, **kwargs)


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    quick = code_blocks()[0].strip().splitlines()
    assert len(quick) == 2
    install_and_demo, install_and_test = (line.split("  #", 1)[0].strip() for line in quick)
    assert install_and_demo == "./install.sh && .venv/bin/cfd demo"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_test in ci.splitlines(), "`.ci/run` must call exactly the README's test command"


def test_every_cfd_command_in_the_readme_parses():
    """Each `cfd ...` line names real subcommands and real options."""
    cfd_lines = [c for c in commands() if c.startswith("cfd ")]
    assert len(cfd_lines) >= 3
    for line in cfd_lines:
        words = shlex.split(line)[1:]
        path = [w for w in words if not w.startswith("-")]
        options = [w.split("=")[0] for w in words if w.startswith("--")]
        result = cfd(*path, "--help")
        assert result.returncode == 0, f"`{line}`: {result.stderr}"
        for option in options:
            assert option in result.stdout, f"`{line}`: {option} is not an option of `cfd {' '.join(path)}`"


def test_every_subcommand_mentioned_in_prose_exists():
    mentioned = set(re.findall(r"`cfd ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", README))
    for phrase in sorted(mentioned):
        words = phrase.split()
        result = cfd(*words, "--help")
        if result.returncode != 0:  # the second word may be an argument, not a subcommand
            result = cfd(words[0], "--help")
        assert result.returncode == 0, f"`cfd {phrase}` from the README does not exist: {result.stderr}"


def test_settings_table_matches_the_code():
    rows = re.findall(r"^\| `(cfd\.[A-Za-z.]+)` \| `(CFD_[A-Z_]+)` \|", README, flags=re.M)
    assert rows == [(spec.key, spec.env) for spec in SPECS]


def test_git_config_command_in_readme_is_honoured(tmp_path, scenario):
    """`git config cfd.modelsDir /data/models` is what `cfd config` then reports."""
    line = next(c for c in commands() if c.startswith("git config cfd.modelsDir"))
    clone = scenario.clone("bob")
    clone.write("pyproject.toml", "[tool.comfydock]\n")
    models = tmp_path / "data-models"
    clone.git(*shlex.split(line)[1:-1], str(models))
    result = cfd("config", "--json", cwd=clone.path)
    assert result.returncode == 0, result.stderr
    assert f'"value": "{models}"' in result.stdout
    assert "git config (local)" in result.stdout


def test_install_sh_explains_an_old_python(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    old = fake / "python3"
    old.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Python 3.9.2'; exit 0; fi\nexit 1\n")
    old.chmod(0o755)
    (fake / "dirname").symlink_to(shutil.which("dirname"))
    # Only the fake old python3 is on PATH, so nothing gets installed.
    env = {"PATH": str(fake), "HOME": str(tmp_path)}
    result = subprocess.run(["/bin/sh", str(ROOT / "install.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "needs Python 3.11 or newer (found: Python 3.9.2)" in result.stderr


def test_exit_code_table_has_the_agents_already_running_code():
    from cfd.agent.daemon import ALREADY_RUNNING

    table = README.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()}
    assert "`cfd agent run`: another agent already serves this models directory" in rows[str(ALREADY_RUNNING)]


def _other_cfd_first_on_path(tmp_path: Path) -> dict[str, str]:
    """A fake ComfyDock `cfd` earlier on PATH than this installation."""
    other = tmp_path / "comfydock-bin"
    other.mkdir()
    (other / "cfd").write_text("#!/bin/sh\necho 'ComfyDock CLI'\n")
    (other / "cfd").chmod(0o755)
    return {**os.environ, "PATH": f"{other}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_the_unambiguous_name_is_installed_and_is_cfd():
    script = Path(sys.executable).parent / "comfy-model-sync"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, f"cfd {__version__}\n")
    assert "comfy-model-sync" in README and "comfydock-cli" in README


def test_version_says_when_another_cfd_is_first_on_path(tmp_path):
    env = _other_cfd_first_on_path(tmp_path)
    result = subprocess.run([str(Path(sys.executable).parent / "cfd"), "--version"], capture_output=True, text=True, env=env)
    assert result.stdout == f"cfd {__version__}\n"
    assert result.stderr.startswith(f"note: `cfd` on your PATH is another program ({tmp_path / 'comfydock-bin' / 'cfd'}")
    assert "comfy-model-sync" in result.stderr
    ours_first = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    result = subprocess.run(["cfd", "--version"], capture_output=True, text=True, env=ours_first)
    assert (result.stdout, result.stderr) == (f"cfd {__version__}\n", "")


def test_install_sh_is_quiet_and_names_the_clash(tmp_path):
    """A repeat install prints one line (no setuptools editable-install essay), plus the clash note."""
    result = subprocess.run(
        ["/bin/sh", str(ROOT / "install.sh"), "--dev"], capture_output=True, text=True, env=_other_cfd_first_on_path(tmp_path), timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"cfd installed: {ROOT}/.venv/bin/cfd, also {ROOT}/.venv/bin/comfy-model-sync (cfd {__version__})"
    ]
    assert "Editable installation" not in result.stderr and "Please be careful" not in result.stderr, result.stderr
    assert "note: `cfd` on your PATH is another program" in result.stderr


def test_install_sh_without_dev_installs_a_plain_copy_that_runs(tmp_path):
    """The quick start's first command on a fresh checkout: a plain (non-editable) install, so no
    import finder sits in every Python start of the hooks; the installed cfd runs without the checkout."""
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (os.fsdecode(f) for f in files)):
        target = checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    result = subprocess.run(["/bin/sh", str(checkout / "install.sh")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith(f"(cfd {__version__})"), result.stdout
    site = next((checkout / ".venv" / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("__editable__*")), "a user's install must not be editable"
    shutil.rmtree(checkout / "core")  # the installed copy does not need the checkout's sources
    version = subprocess.run([str(checkout / ".venv" / "bin" / "cfd"), "--version"], capture_output=True, text=True)
    assert (version.returncode, version.stdout) == (0, f"cfd {__version__}\n"), version.stderr
