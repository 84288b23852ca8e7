"""Reading commits and blobs from git's object database: the only module that imports pygit2.

Hooks and the agent read manifests from git objects, never from the work tree
(which may hold uncommitted edits). The repository is always opened by an
explicit path: pygit2 ignores GIT_DIR, which git exports inside some hooks.
Failures become CfdError messages a user can act on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

from .git import GitError

MANIFEST_PATH = "pyproject.toml"
_ZERO = frozenset("0")


def _load_compiled_pygit2() -> tuple[ModuleType, str]:
    """pygit2's compiled module (libgit2 bindings) and how it was loaded ("core" or "package").

    `import pygit2` costs ~50 ms, most of a hook's imports: its package layer builds the
    enum classes and imports ssl, tarfile and inspect for remotes, archives and settings.
    Reading objects needs only the compiled `pygit2._pygit2` (its enums as plain ints),
    so it is loaded on its own when the installed pygit2 has the expected layout; anything
    else falls back to the plain import. A later `import pygit2` (tests, other code) reuses
    the modules loaded here.
    """
    if "pygit2._pygit2" in sys.modules:
        return sys.modules["pygit2._pygit2"], "package"
    try:
        return _load_core_only(), "core"
    except Exception:  # noqa: BLE001 - another pygit2 layout: the plain import does it all
        import pygit2._pygit2 as compiled

        return compiled, "package"


def _load_core_only() -> ModuleType:
    import importlib.machinery
    import importlib.util

    spec = importlib.util.find_spec("pygit2")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pygit2 not found")
    locations = list(spec.submodule_search_locations)
    path = next(
        os.path.join(folder, "_pygit2" + suffix)
        for folder in locations
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if os.path.isfile(os.path.join(folder, "_pygit2" + suffix))
    )
    if "pygit2" in sys.modules:
        raise ImportError("pygit2 is being imported already")  # another thread's plain import: share it
    # A bare stand-in for the package while its submodules load, so that its __init__ does not run.
    stand_in = ModuleType("pygit2")
    stand_in.__path__ = locations
    sys.modules["pygit2"] = stand_in
    try:
        core_spec = importlib.util.spec_from_file_location("pygit2._pygit2", path)
        assert core_spec is not None and core_spec.loader is not None
        with _no_ca_bundle_read():
            compiled = importlib.util.module_from_spec(core_spec)  # loads libgit2, which starts OpenSSL
        sys.modules["pygit2._pygit2"] = compiled  # an extension module loads once per process: keep it
        try:
            core_spec.loader.exec_module(compiled)
        except BaseException:
            del sys.modules["pygit2._pygit2"]
            raise
        _cache_plain_enums(compiled)
        import pygit2._libgit2  # noqa: F401 - its cffi bindings, while the stand-in keeps __init__ away
        return compiled
    finally:
        if sys.modules.get("pygit2") is stand_in:
            del sys.modules["pygit2"]


class _no_ca_bundle_read:
    """libgit2 reads the system's whole CA bundle when it loads (~200 KB of PEM parsed, ~4 ms of a
    hook). cfd never reaches a remote through libgit2 (git itself fetches; pygit2 only reads local
    objects), so while the core loads OpenSSL is pointed at an empty file; the variable is put back
    at once, so downloads and git still see the user's SSL_CERT_FILE."""

    def __enter__(self) -> None:
        self.saved = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = os.devnull

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = self.saved


class _PlainEnums(ModuleType):
    """A stand-in for `pygit2.enums` while the compiled core caches its enum classes: each is `int`.

    The core turns the flags and kinds it returns (object types, file modes...) into these
    classes; pygit2's own module builds ~40 enum classes (~8 ms of a hook) that compare equal
    to the plain ints this gives. Only for the core loaded alone: a later `import pygit2` runs
    its package, which caches the real classes again.
    """

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return int


def _cache_plain_enums(compiled: ModuleType) -> None:
    previous = sys.modules.get("pygit2.enums")
    sys.modules["pygit2.enums"] = _PlainEnums("pygit2.enums")
    try:
        compiled._cache_enums()
    finally:
        if previous is None:
            del sys.modules["pygit2.enums"]
        else:
            sys.modules["pygit2.enums"] = previous


_pygit2, LOADED_AS = _load_compiled_pygit2()


def _disable_strict_hash_verification() -> None:
    """git verified every object when it received it; libgit2 re-hashing each read
    costs ~17 ms per 3 MB manifest, which a hook's budget cannot spare."""
    from pygit2._libgit2 import ffi, lib

    lib.git_libgit2_opts(lib.GIT_OPT_ENABLE_STRICT_HASH_VERIFICATION, ffi.cast("int", 0))


_disable_strict_hash_verification()


def is_null_commit(rev: str | None) -> bool:
    """None, "", or git's all-zero id (post-checkout after a clone)."""
    return not rev or set(rev) <= _ZERO


class GitRepo:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            self._repo = _pygit2.Repository(_pygit2.init_file_backend(os.fspath(path), 0))
        except (_pygit2.GitError, KeyError) as exc:
            raise GitError(f"cannot open the git repository at {path}: {exc}", "check the path, or run `git status` there") from None

    def _object(self, key: str):  # type: ignore[no-untyped-def]
        found = self._repo.git_object_lookup_prefix(key)
        if found is None:
            raise KeyError(key)
        return found

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
            commit = obj.peel(_pygit2.Commit)
        except (KeyError, ValueError, _pygit2.GitError, _pygit2.InvalidSpecError):
            return None
        return str(commit.id)

    def parents(self, rev: str) -> list[str]:
        commit = self.resolve_commit(rev)
        if commit is None:
            return []
        return [str(p) for p in self._object(commit).peel(_pygit2.Commit).parent_ids]

    def blob_id(self, commit: str | None, path: str = MANIFEST_PATH) -> str | None:
        """The blob id of `path` in `commit`; None when the commit or file is absent."""
        resolved = self.resolve_commit(commit)
        if resolved is None:
            return None
        try:
            entry = self._object(resolved).tree[path]
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
        except (KeyError, ValueError, _pygit2.GitError):
            return None
        return int(size)

    def read_blob(self, blob_id: str) -> bytes:
        return bytes(self.read_blob_view(blob_id))

    def read_blob_view(self, blob_id: str) -> memoryview:
        """A blob's content as a read-only view of libgit2's own buffer, which it keeps alive.

        A bytes copy is another 3 MB of fresh memory for a 3 MB manifest, which a hook (a fresh
        process) pays in page faults (~1.5 ms per blob) before it even decodes it.
        """
        try:
            blob = self._object(blob_id)
        except (KeyError, ValueError, _pygit2.GitError):
            raise GitError(f"git object {blob_id} is missing", "run `git fsck`, or fetch again") from None
        if not isinstance(blob, _pygit2.Blob):
            raise GitError(f"git object {blob_id} is not a file", None)
        return memoryview(blob)


def open_repo(path: str | os.PathLike[str]) -> GitRepo:
    return GitRepo(path)
