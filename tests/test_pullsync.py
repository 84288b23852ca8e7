"""core.pullsync.sync_between and core.gitrepo, called directly on real repositories."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Clone, Scenario
from test_hooks_runtime import M, manifest, pending

from cfd.core.environment import open_environment
from cfd.core.errors import CfdError
from cfd.core.gitobjects import GitRepo, is_null_commit
from cfd.core.dialect import DIALECTS
from cfd.core.store.index import ModelIndex
from helpers.manifest import current_dialect
from cfd.core.sync.pullsync import (

    ALREADY_SYNCED,
    BROKEN_MANIFEST,
    NO_MANIFEST,
    SYNCED,
    UNCHANGED,
    read_last_synced,
    sync_between,
)

pytestmark = pytest.mark.usefixtures("both_dialects")  # shared behaviour: ComfyGit and ComfyDock


@pytest.fixture
def bob(scenario: Scenario, cfd_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Clone:
    for key in ("CFD_MODELS_DIR", "CFD_INDEX"):
        monkeypatch.setenv(key, cfd_env[key])
    monkeypatch.setenv("CFD_ON_PULL", "defer")
    scenario.seed({"pyproject.toml": manifest(), "README.md": "hi\n"})
    return scenario.clone("bob")


def sync(clone: Clone, old: str | None, new: str = "HEAD", **kw):
    return sync_between(open_environment(clone.path), old, new, trigger="test", **kw)


def blob(clone: Clone, rev: str = "HEAD") -> str:
    return clone.rev_parse(f"{rev}:pyproject.toml")


def place(cfd_env: dict[str, str], m: M) -> None:
    """Put the model on disk and in the index, as a scan would."""
    models_dir = Path(cfd_env["CFD_MODELS_DIR"])
    path = models_dir / m.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(m.data)
    with ModelIndex(cfd_env["CFD_INDEX"], models_dir, DIALECTS[current_dialect()]) as index:
        index.record_file(m.hash, m.relpath, size=m.size, mtime=path.stat().st_mtime)


def test_same_manifest_is_unchanged(bob):
    before = bob.head()
    bob.commit("docs", {"README.md": "more\n"})
    assert sync(bob, before).action == UNCHANGED
    assert read_last_synced(bob.path / ".git") is None


def test_new_commit_without_manifest(bob):
    bob.git("rm", "-q", "--cached", "pyproject.toml")  # the work tree keeps it: still an environment
    bob.git("commit", "-qm", "no manifest")
    assert sync(bob, "HEAD~1").action == NO_MANIFEST


def test_defer_records_and_last_synced_makes_it_idempotent(bob):
    a, b, nosrc = M(1), M(2, "optional"), M(3, source=None)
    before = bob.head()
    bob.commit("models", {"pyproject.toml": manifest(a, b, nosrc)})
    outcome = sync(bob, before)
    assert outcome.action == SYNCED and outcome.mode == "defer" and outcome.strategy == "required"
    assert {m.hash for m in outcome.missing} == {a.hash, b.hash, nosrc.hash}
    reasons = {k: e["reason"] for k, e in pending(bob).items()}
    assert reasons == {a.hash: "deferred", b.hash: "filtered", nosrc.hash: "no-source"}
    assert outcome.needs_repair
    assert read_last_synced(bob.path / ".git") == blob(bob)
    assert (bob.path / ".git" / "cfd" / "last-synced").read_text().endswith("\n")  # the shim's `read` needs it
    assert sync(bob, before).action == ALREADY_SYNCED


def test_a_damaged_last_synced_only_makes_the_next_sync_diff_again(bob):
    a = M(5)
    before = bob.head()
    bob.commit("models", {"pyproject.toml": manifest(a)})
    path = bob.path / ".git" / "cfd" / "last-synced"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob(bob).encode() + b"\r\n")  # an editor's line ending: still the id
    assert read_last_synced(bob.path / ".git") == blob(bob)
    path.write_bytes(b"\xff\xfe garbage")
    assert read_last_synced(bob.path / ".git") is None
    outcome = sync(bob, before)
    assert outcome.action == SYNCED and a.hash in {m.hash for m in outcome.missing}


@pytest.mark.parametrize("old", [None, "0" * 40, "deadbeef", "ORIG_HEAD"])
def test_unresolvable_old_commit_is_the_empty_manifest(bob, old):
    a = M(4)
    bob.commit("models", {"pyproject.toml": manifest(a)})
    assert a.hash in {m.hash for m in sync(bob, old).missing}


def test_present_models_are_not_recorded_and_leave_the_marker(bob, cfd_env):
    a, b = M(5, "optional"), M(6)
    place(cfd_env, b)
    start = bob.head()
    bob.commit("models", {"pyproject.toml": manifest(a, b)})
    sync(bob, start)
    assert set(pending(bob)) == {a.hash}  # b is on disk
    place(cfd_env, a)
    raised = M(5, "required")
    bob.commit("a is required now", {"pyproject.toml": manifest(raised, b)})
    outcome = sync(bob, "HEAD~1")
    assert outcome.action == SYNCED and outcome.checked == 1 and not outcome.missing
    assert pending(bob) == {}


def test_models_no_longer_needed_leave_the_marker(bob):
    a, b = M(8), M(9)
    start = bob.head()
    bob.commit("models", {"pyproject.toml": manifest(a, b)})
    sync(bob, start)
    bob.commit("drop b", {"pyproject.toml": manifest(a)})
    outcome = sync(bob, "HEAD~1")
    assert outcome.action == SYNCED
    assert set(pending(bob)) == {a.hash}


def test_broken_manifest_warns_with_the_commit_and_records_nothing(bob):
    start = bob.head()
    sha = bob.commit("oops", {"pyproject.toml": manifest(M(12)) + "\n<<<<<<< HEAD\n"})
    outcome = sync(bob, start)
    assert outcome.action == BROKEN_MANIFEST
    assert sha[:10] in outcome.warnings[0] and "cfd repair" in outcome.warnings[0]
    assert pending(bob) == {}
    assert read_last_synced(bob.path / ".git") is None


def test_diff_starts_from_last_synced(bob):
    a, mine, theirs = M(13), M(14), M(15)
    start = bob.head()
    bob.commit("a", {"pyproject.toml": manifest(a)})
    sync(bob, start)
    bob.commit("my model, no hook acted", {"pyproject.toml": manifest(a, mine)})
    bob.commit("theirs", {"pyproject.toml": manifest(a, mine, theirs)})
    outcome = sync(bob, "HEAD~1")
    assert {m.hash for m in outcome.missing} == {mine.hash, theirs.hash}


def test_interrupted_download_is_recorded_before_it_starts(bob, monkeypatch):
    from cfd.core.sync import fetch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "sync_models", interrupted)
    a = M(16)
    start = bob.head()
    bob.commit("a", {"pyproject.toml": manifest(a)})
    with pytest.raises(KeyboardInterrupt):
        sync(bob, start, mode="download")
    assert pending(bob)[a.hash]["reason"] == "interrupted"
    assert read_last_synced(bob.path / ".git") == blob(bob)


def test_download_mode_passes_the_selection_to_sync_models(bob, monkeypatch):
    from cfd.core.sync import fetch

    calls = []

    def fake(env, models, intents, *, callbacks=None, cancel=None, trigger="", deadline=None):
        calls.append(([m.hash for m in models], trigger))
        return fetch.SyncResult([m.model.filename for m in models], [], [])

    monkeypatch.setattr(fetch, "sync_models", fake)
    req, opt = M(17), M(18, "optional")
    start = bob.head()
    bob.commit("a", {"pyproject.toml": manifest(req, opt)})
    outcome = sync(bob, start, mode="download", strategy="required")
    assert calls == [([req.hash], "test")]
    assert outcome.downloaded == (req.name,)


def test_the_agent_does_not_start_another_agent(bob, monkeypatch):
    a = M(19)
    start = bob.head()
    bob.commit("a", {"pyproject.toml": manifest(a)})
    outcome = sync_between(open_environment(bob.path), start, "HEAD", trigger="agent", mode="background",
                           start_agent=lambda env: pytest.fail("spawned an agent"))
    assert outcome.handed_to_agent == 1 and outcome.agent_started
    assert pending(bob)[a.hash]["reason"] == "background"
    assert not outcome.needs_repair


def test_gitrepo_opens_by_explicit_path_ignoring_git_dir(bob, scenario, monkeypatch):
    other = scenario.clone("other")
    head, parent, manifest_blob = bob.commit("mine", {"README.md": "bob\n"}), bob.rev_parse("HEAD~1"), blob(bob)
    monkeypatch.setenv("GIT_DIR", str(other.path / ".git"))  # as git exports it in some hooks
    repo = GitRepo(bob.path)
    assert repo.resolve_commit("HEAD") == head
    assert repo.blob_id("HEAD") == manifest_blob
    assert repo.read_blob(manifest_blob) == (bob.path / "pyproject.toml").read_bytes()
    assert repo.resolve_commit("nope") is None and repo.blob_id("nope") is None
    assert repo.parents("HEAD") == [parent]
    assert is_null_commit("0" * 40) and is_null_commit(None) and not is_null_commit("abc")


def test_gitrepo_error_is_a_cfd_error(tmp_path):
    with pytest.raises(CfdError, match="cannot open the git repository"):
        GitRepo(tmp_path / "nowhere")
