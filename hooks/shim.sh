#!/bin/sh
# cfd-hook-id: 4b1d7c2e-cfd-model-sync
# cfd-hook-version: @VERSION@
# Written by `cfd hooks install`; `cfd hooks uninstall` removes it (and restores
# a previous hook kept as @HOOK@.legacy). Keeps models in sync when git changes
# pyproject.toml. CFD_SKIP=1 or `git config cfd.hooks.enabled false` turns it off.
HOOK='@HOOK@'
CFD_PYTHON='@PYTHON@'

case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
status=0
if [ -x "$here/$HOOK.legacy" ]; then
    "$here/$HOOK.legacy" "$@" || status=$?
fi
# git honours only post-checkout's exit status: pass the legacy hook's on, never ours.
finish() {
    [ "$HOOK" = post-checkout ] && exit $status
    exit 0
}
case ${CFD_SKIP:-} in 1 | true | yes) finish ;; esac
case ${CFD_HOOKS_ENABLED:-} in 0 | false | no | off) finish ;; esac

old= new=HEAD
case $HOOK in
post-checkout) [ "${3:-}" = 1 ] || finish; old=$1 new=$2 ;;  # 0 = file checkout
post-merge) [ "${1:-}" = 1 ] && finish; old=ORIG_HEAD ;;     # 1 = squash: nothing committed
post-rewrite) [ "${1:-}" = rebase ] || finish; old=ORIG_HEAD ;;
post-commit) ;;  # only a merge commit (a conflicted merge finished by hand) matters
esac
case $old in *[!0]*) ;; *) old= ;; esac  # all zeros after a clone: nothing before

# Fast path: pyproject.toml's blob ids, without starting Python.
if [ -n "$old" ]; then
    out=$(git rev-parse --git-dir "$new:pyproject.toml" "$old:pyproject.toml" 2>/dev/null)
elif [ "$HOOK" = post-commit ]; then
    out=$(git rev-parse --git-dir "$new:pyproject.toml" "$new^@" 2>/dev/null)
else
    out=$(git rev-parse --git-dir "$new:pyproject.toml" 2>/dev/null)
fi
nl='
'
gd=${out%%"$nl"*}
rest=${out#*"$nl"}
new_blob=${rest%%"$nl"*}
tail=
[ "$rest" = "$new_blob" ] || tail=${rest#*"$nl"}
# Values are split on newlines: a repository path holding one would shift them all. Then
# nothing here can be trusted, and Python (which reads paths whole) decides.
fast=1
case $PWD in *"$nl"*) fast= ;; esac
[ -d "$gd" ] || fast=
case $new_blob in
'' | *:*) [ -n "$fast" ] && finish ;;  # no pyproject.toml in the new commit
*[!0-9a-f]*) fast= ;;
esac
# The manifest did not change, but the workflows did and ComfyUI sits beside .cec: Python
# copies them into ComfyUI (one more git call, only in an environment that has a ComfyUI).
workflows_changed() {
    [ "$HOOK" != post-commit ] && [ -d ../ComfyUI ] || return 1
    w=$(git rev-parse -q --verify "$new:workflows" 2>/dev/null)
    o=
    [ -n "$old" ] && o=$(git rev-parse -q --verify "$old:workflows" 2>/dev/null)
    [ "$w" != "$o" ]
}
if [ -n "$fast" ]; then
    synced=
    [ -f "$gd/cfd/last-synced" ] && read -r synced <"$gd/cfd/last-synced"
    [ "$new_blob" = "$synced" ] && { workflows_changed || finish; }
    case $HOOK in
    post-commit)
        case $tail in *"$nl"*) ;; *) finish ;; esac  # fewer than two parents
        [ -d "$gd/rebase-merge" ] || [ -d "$gd/rebase-apply" ] && finish ;;
    post-checkout)
        # mid-rebase; post-rewrite syncs at the end
        [ -d "$gd/rebase-merge" ] || [ -d "$gd/rebase-apply" ] && finish
        [ "$new_blob" = "$tail" ] && { workflows_changed || finish; } ;;
    *) [ "$new_blob" = "$tail" ] && { workflows_changed || finish; } ;;
    esac
fi

if [ -x "$CFD_PYTHON" ]; then
    # -P: `-m` would put the work tree first on sys.path, and a pulled typing.py or cfd/
    # would run in place of Python's or cfd's own.
    "$CFD_PYTHON" -P -m cfd.hooks.runtime "$HOOK" "$@" || :
elif command -v cfd >/dev/null 2>&1; then
    cfd hook-run "$HOOK" "$@" || :
else
    echo "cfd: $HOOK hook skipped: cfd is not installed at $CFD_PYTHON nor on PATH (reinstall cfd, then run 'cfd hooks install')" >&2
fi
finish
