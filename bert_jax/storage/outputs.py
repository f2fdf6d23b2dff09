"""Where commands write: checked before any work, so that nothing is destroyed.

Every command that writes a path calls `check_destination` first (before a
model is loaded or anything compiles): a destination that exists and is not
the command's own earlier output is refused unless the user passed
`--overwrite`; a destination that is, contains or lies inside one of the
command's sources is always refused; a path whose parent cannot be created or
written is refused with the reason. Directories are then written to a temp
sibling and swapped into place (`write_dir_atomic`): a crash leaves either the
old contents or the new, never a mix, and never nothing.

`gs://` destinations get the same checks through `storage` (the bucket must
exist; "exists", "empty" and "own output" are answered by listing the prefix).
Object storage has no rename, so there a directory is staged in a local temp
dir (all the work that can fail happens before the bucket is touched), and
only then are the old objects deleted and the new ones uploaded, each final
object written once, deepest first so that a dir's top-level marker files
(bert_jax.json, config.json) appear last. A crash during the upload leaves a
prefix without its marker, which no command takes for a finished output.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterable

from bert_jax import storage


class OutputError(ValueError):
    """A destination we must not write (the message names it and why)."""


def _resolved(p) -> pathlib.Path:
    return pathlib.Path(os.path.abspath(os.path.expanduser(str(p))))


def _inside(child: pathlib.Path, parent: pathlib.Path) -> bool:
    return child == parent or parent in child.parents


def _url_inside(child: str, parent: str) -> bool:
    child, parent = child.rstrip("/"), parent.rstrip("/")
    return child == parent or child.startswith(parent + "/")


def _check_not_source_url(dst, sources: Iterable, what: str) -> None:
    d = os.fspath(dst)
    for src in sources:
        if src is None or src == "" or not storage.is_url(src):
            continue
        s = os.fspath(src)
        if d.rstrip("/") == s.rstrip("/"):
            raise OutputError(f"{dst}: the {what} is the source {src}; write somewhere else")
        if _url_inside(d, s):
            raise OutputError(f"{dst}: the {what} lies inside the source {src}; write "
                              "somewhere else")
        if _url_inside(s, d):
            raise OutputError(f"{dst}: the {what} contains the source {src}; write "
                              "somewhere else")


def check_not_source(dst, sources: Iterable, what: str = "output") -> None:
    """`dst` must neither be a source, nor lie inside one, nor contain one."""
    if storage.is_url(dst):
        _check_not_source_url(dst, sources, what)
        return
    sources = [s for s in sources if not (s and storage.is_url(s))]
    d = _resolved(dst)
    real_d = pathlib.Path(os.path.realpath(d))
    for src in sources:
        if src is None or src == "":
            continue
        s = _resolved(src)
        real_s = pathlib.Path(os.path.realpath(s))
        if real_d == real_s or d == s:
            raise OutputError(f"{dst}: the {what} is the source {src}; write somewhere else")
        if _inside(real_d, real_s) or _inside(d, s):
            raise OutputError(f"{dst}: the {what} lies inside the source {src}; write "
                              "somewhere else")
        if _inside(real_s, real_d) or _inside(s, d):
            raise OutputError(f"{dst}: the {what} contains the source {src}; write "
                              "somewhere else")


def check_writable_parent(path, what: str = "output") -> None:
    """The nearest existing ancestor of `path` must be a writable directory."""
    p = _resolved(path)
    for anc in p.parents:
        if anc.exists():
            if not anc.is_dir():
                raise OutputError(f"{path}: cannot create the {what}: {anc} is a file, not a "
                                  "directory")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot create the {what}: {anc} is not writable")
            return


def check_writable_dir(path, what: str = "workdir") -> None:
    """`path` is a writable directory, or can be created as one."""
    if storage.is_url(path):
        storage.check_bucket(path)  # raises StorageError naming the URL
        if storage.isfile(path):
            raise OutputError(f"{path}: the {what} is a file, not a directory")
        return
    p = _resolved(path)
    if p.exists():
        if not p.is_dir():
            raise OutputError(f"{path}: the {what} is a file, not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: the {what} is not writable")
        return
    check_writable_parent(path, what)


def check_destination(dst, *, kind: str = "dir", overwrite: bool = False,
                      is_own: Callable[[pathlib.Path], bool] | None = None,
                      sources: Iterable = (), what: str = "output",
                      flag: str = "--overwrite") -> None:
    """Refuse to write `dst` when that would destroy something.

    kind: 'dir' or 'file', what `dst` will be.
    is_own(path): True when an existing `dst` is this command's own earlier
      output (rewriting it loses nothing the command cannot make again).
    """
    check_not_source(dst, sources, what)
    if storage.is_url(dst):
        _check_destination_url(dst, kind, overwrite, is_own, what, flag)
        return
    p = _resolved(dst)
    if p.exists() or p.is_symlink():
        if kind == "dir" and not p.is_dir():
            raise OutputError(f"{dst}: the {what} is a file, not a directory")
        if kind == "file" and p.is_dir():
            raise OutputError(f"{dst}: the {what} is a directory, not a file")
        empty = p.is_dir() and not any(p.iterdir())
        if not empty and not overwrite and not (is_own is not None and is_own(p)):
            held = "is not empty" if kind == "dir" else "exists"
            raise OutputError(f"{dst}: the {what} {held} and is not this command's earlier "
                              f"output; pass {flag} to replace it, or choose another path")
        if kind == "dir":
            check_writable_dir(dst, what)
        elif not os.access(p.parent, os.W_OK | os.X_OK):
            raise OutputError(f"{dst}: cannot replace the {what}: {p.parent} is not writable")
    else:
        check_writable_parent(dst, what)


def _check_destination_url(dst, kind, overwrite, is_own, what, flag) -> None:
    storage.check_bucket(dst)
    is_dir, is_file = storage.isdir(dst), storage.isfile(dst)
    if not (is_dir or is_file):
        return
    if kind == "dir" and is_file:
        raise OutputError(f"{dst}: the {what} is a file, not a directory")
    if kind == "file" and is_dir:
        raise OutputError(f"{dst}: the {what} is a directory, not a file")
    empty = is_dir and not storage.listdir(dst)
    if not empty and not overwrite and not (is_own is not None and is_own(os.fspath(dst))):
        held = "is not empty" if kind == "dir" else "exists"
        raise OutputError(f"{dst}: the {what} {held} and is not this command's earlier "
                          f"output; pass {flag} to replace it, or choose another path")


def only_entries(allowed: Callable[[str], bool]) -> Callable[[pathlib.Path | str], bool]:
    """is_own for directories: every entry's name is one the command writes.
    Takes a pathlib.Path (local) or a URL string."""
    def is_own(p) -> bool:
        return storage.isdir(p) and all(allowed(e) for e in storage.listdir(p))
    return is_own


def _upload_dir(local: pathlib.Path, dst) -> None:
    """Replace the objects under URL `dst` with the files of `local` (see the
    module docstring: the old objects go only once the new ones are complete
    locally; deepest files first, top-level markers last)."""
    files = sorted((os.path.relpath(os.path.join(root, f), local)
                    for root, _, names in os.walk(local) for f in names),
                   key=lambda r: (-r.count(os.sep), r))
    storage.remove(dst)
    for rel in files:
        storage.copy_file(local / rel, storage.join(dst, *rel.split(os.sep)))


def write_dir_atomic(dst, writer: Callable[[pathlib.Path], None]) -> None:
    """writer(tmp) fills a temp sibling of `dst`, which then takes `dst`'s place.
    An old `dst` is renamed aside first and deleted only after the swap. For a
    URL: writer fills a local temp dir, then `_upload_dir`."""
    if storage.is_url(dst):
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="bert_jax_out_"))
        try:
            writer(tmp)
            _upload_dir(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    dst = pathlib.Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    old = None
    try:
        writer(tmp)
        if dst.exists() or dst.is_symlink():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
        try:
            os.replace(tmp, dst)
        except OSError:
            if old is not None:
                os.replace(old, dst)  # put the old contents back
                old = None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def write_file_atomic(dst, writer: Callable[[pathlib.Path], None], suffix: str = "") -> None:
    """writer(tmp) writes a temp sibling of file `dst`, then renamed onto it;
    for a URL a local temp file, then uploaded once as the final object."""
    if storage.is_url(dst):
        tmpdir = pathlib.Path(tempfile.mkdtemp(prefix="bert_jax_out_"))
        try:
            tmp = tmpdir / f"{storage.name(dst)}{suffix}"
            writer(tmp)
            storage.copy_file(tmp, dst)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return
    dst = pathlib.Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}{suffix}")
    try:
        writer(tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
