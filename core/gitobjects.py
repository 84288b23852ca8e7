"""Reading commits and blobs from git's object database: the only module that imports pygit2.

Hooks and the agent read manifests from git objects, never from the work tree
(which may hold uncommitted edits). The repository is always opened by an
explicit path: pygit2 ignores GIT_DIR, which git exports inside some hooks.
Failures become CfdError messages a user can act on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pygit2

from .git import GitError

MANIFEST_PATH = "pyproject.toml"
_ZERO = frozenset("0")

# git verified every object when it received it; libgit2 re-hashing each read
# costs ~17 ms per 3 MB manifest, which a hook's budget cannot spare.
pygit2.option(pygit2.enums.Option.ENABLE_STRICT_HASH_VERIFICATION, False)


def is_null_commit(rev: str | None) -> bool:
    """None, "", or git's all-zero id (post-checkout after a clone)."""
    return not rev or set(rev) <= _ZERO


class GitRepo:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            self._repo = pygit2.Repository(os.fspath(path))
        except (pygit2.GitError, KeyError) as exc:
            raise GitError(f"cannot open the git repository at {path}: {exc}", "check the path, or run `git status` there") from None

    @property
    def git_dir(self) -> Path:
        """The per-worktree git dir (where ORIG_HEAD and cfd's state live)."""
        return Path(self._repo.path)

    @property
    def workdir(self) -> Path | None:
        return Path(self._repo.workdir) if self._repo.workdir else None

    def resolve_commit(self, rev: str | None) -> str | None:
        """Commit id for a revision (sha, HEAD, ORIG_HEAD, HEAD^1 ...); None if it does not resolve."""
        if rev is None or is_null_commit(rev):
            return None
        try:
            obj = self._repo.revparse_single(rev)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            return None
        return str(commit.id)

    def parents(self, rev: str) -> list[str]:
        commit = self.resolve_commit(rev)
        if commit is None:
            return []
        return [str(p) for p in self._repo[commit].peel(pygit2.Commit).parent_ids]

    def blob_id(self, commit: str | None, path: str = MANIFEST_PATH) -> str | None:
        """The blob id of `path` in `commit`; None when the commit or file is absent."""
        resolved = self.resolve_commit(commit)
        if resolved is None:
            return None
        try:
            entry = self._repo[resolved].tree[path]
        except KeyError:
            return None
        if entry.type_str != "blob":
            return None
        return str(entry.id)

    def has_blob(self, blob_id: str | None) -> bool:
        """Whether git still has this object (a last-synced blob may have been pruned)."""
        if not blob_id:
            return False
        try:
            return blob_id in self._repo.odb
        except (ValueError, TypeError):
            return False

    def blob_size(self, blob_id: str) -> int | None:
        """A blob's size without reading it (None when git does not have it)."""
        try:
            _kind, size = self._repo.odb.read_header(blob_id)
        except (KeyError, ValueError, pygit2.GitError):
            return None
        return int(size)

    def read_blob(self, blob_id: str) -> bytes:
        # Straight from the object database: Repository[...] reads the object twice.
        try:
            kind, data = self._repo.odb.read(blob_id)
        except (KeyError, ValueError, pygit2.GitError):
            raise GitError(f"git object {blob_id} is missing", "run `git fsck`, or fetch again") from None
        if kind != pygit2.enums.ObjectType.BLOB:
            raise GitError(f"git object {blob_id} is not a file", None)
        return bytes(data)


def open_repo(path: str | os.PathLike[str]) -> GitRepo:
    return GitRepo(path)
