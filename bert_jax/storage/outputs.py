"""Where commands write: checked before any work, so that nothing is destroyed.

Every command that writes a path calls `check_destination` first (before a
model is loaded or anything compiles). Directory outputs record which command
wrote them and what they are (`written_by`: {"command", "kind"}, see
`record`). A destination that exists and is not empty is replaced only when it
records the same command and kind; `--overwrite` adds an output of the same
command of another kind, and a directory without a record holding only names
the command writes (older or interrupted outputs). Another command's output,
a directory holding anything else and a bucket root are refused, --overwrite
or not. A destination that is, contains or lies inside one of the command's
sources is always refused; a path whose parent cannot be created or written
is refused with the reason. Directories are then written to a temp sibling and
swapped into place (`write_dir_atomic`): a crash leaves either the old
contents or the new, never a mix, and never nothing.

`gs://` destinations get the same checks through `storage` (the bucket must
exist; "exists", "empty" and "own output" are answered by listing the prefix).
Object storage has no rename, so there a directory is staged in a local temp
dir (all the work that can fail happens before the bucket is touched); then
`upload_dir` deletes the old top-level markers, uploads the new objects
(deepest first, markers last) and only then deletes the old objects the new
output did not overwrite. A crash during the upload leaves a prefix without
its marker, which no command takes for a finished output, and nothing outside
the destination is ever deleted.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable

from bert_jax.storage import json_input, paths


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
        if src is None or src == "" or not paths.is_url(src):
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
    if paths.is_url(dst):
        _check_not_source_url(dst, sources, what)
        return
    sources = [s for s in sources if not (s and paths.is_url(s))]
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
    if paths.is_url(path):
        paths.check_bucket(path)  # raises StorageError naming the URL
        if paths.isfile(path):
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


# Where a directory output says which command wrote it and what it is:
# {"written_by": {"command": ..., "kind": ...}} inside the dir's own marker
# (bert_jax.json of a model dir or workdir, manifest.json of a prepared
# corpus), or RECORD_FILE for outputs that have no marker of their own
# (HF / TF1 conversions, aot --out).
RECORD_KEY = "written_by"
RECORD_FILE = "bert_jax_output.json"
MARKER_FILES = ("bert_jax.json", "manifest.json", RECORD_FILE)


def record(command: str, kind: str) -> dict:
    return {"command": command, "kind": kind}


def _legacy_record(marker: str, obj) -> dict | None:
    """What an output written before records existed is, from its marker."""
    if marker == "manifest.json" and isinstance(obj, dict) and "data_fingerprint" in obj:
        return record("prepare", "prepared corpus")
    if marker == "bert_jax.json" and isinstance(obj, dict):
        return record_of_task(obj.get("task"))
    return None


def record_of_task(task) -> dict | None:
    """The record a model dir's "task" block implies (None: not known)."""
    kind = (task or {}).get("kind") if isinstance(task, dict) else None
    if kind == "pretraining":
        return record("pretrain", "pretraining workdir")
    if kind:  # glue, conll, squad, ...
        return record("finetune", "fine-tuned model")
    return None


def written_by(path) -> dict | None:
    """The record of the command that wrote directory `path`; None when it has
    none (not ours, or written before records existed). A marker that cannot
    be read is someone else's file: it gets a record no command matches."""
    for marker in MARKER_FILES:
        f = paths.join(path, marker)
        if not paths.isfile(f):
            continue
        try:
            obj = json_input.read(f)
        except (ValueError, OSError):
            return record("unknown", f"directory with an unreadable {marker}")
        rec = obj.get(RECORD_KEY) if isinstance(obj, dict) else None
        if isinstance(rec, dict) and {"command", "kind"} <= set(rec):
            return {"command": str(rec["command"]), "kind": str(rec["kind"])}
        return _legacy_record(marker, obj)
    return None


def write_record(dir_path, rec: dict) -> None:
    """RECORD_FILE in `dir_path` (for outputs with no marker of their own)."""
    paths.write_text(paths.join(dir_path, RECORD_FILE),
                     json.dumps({RECORD_KEY: rec}, indent=2) + "\n")


def is_bucket_root(url) -> bool:
    """gs://bucket or gs://bucket/ (no prefix): never an output directory."""
    rest = os.fspath(url).split("://", 1)[1]
    return "/" not in rest.strip("/")


def _describe(rec: dict) -> str:
    return f"a {rec['kind']} written by `{rec['command']}`"


def _own_or_refuse(dst, p, *, kind, overwrite, is_own, what, flag, rec, resume=False) -> None:
    """`p` (a Path or URL) exists and is not empty: return when this command
    may replace it, else raise naming why (see check_destination)."""
    theirs = written_by(p) if kind == "dir" else None
    if rec is not None and theirs is not None:
        if theirs == rec:
            return  # an earlier output of this command and kind
        if theirs["command"] == rec["command"] and overwrite:
            return  # --overwrite: an output of the same command, another kind
        raise OutputError(
            f"{dst}: the {what} holds {_describe(theirs)}; `{rec['command']}` replaces only "
            f"its own {rec['kind']}" + ("" if theirs["command"] == rec["command"] else
                                        " (--overwrite: any output of this command)")
            + "; choose another path")
    own_entries = is_own is not None and is_own(p)
    if own_entries and (overwrite or rec is None or resume):
        return  # this command's earlier output (a workdir or an interrupted
        # prepare to resume), or one written before records existed and the
        # user said so
    if kind == "file" and overwrite:
        return  # one file the user named: --overwrite replaces it
    held = "is not empty" if kind == "dir" else "exists"
    if own_entries:  # rec is not None: no record, but nothing foreign either
        raise OutputError(f"{dst}: the {what} {held} and is not this command's earlier "
                          f"output; pass {flag} to replace it, or choose another path")
    if overwrite and kind == "dir":
        names = [e for e in paths.listdir(p)][:3]
        raise OutputError(f"{dst}: the {what} {held} and holds files this command did not "
                          f"write ({', '.join(names)}); {flag} replaces only an earlier "
                          "output of this command, never other files: choose another path")
    hint = (f"pass {flag} to replace it, or choose another path" if kind == "file" or
            is_own is None else f"choose another path ({flag} replaces only an earlier "
            "output of this command)")
    raise OutputError(f"{dst}: the {what} {held} and is not this command's earlier "
                      f"output; {hint}")


def check_destination(dst, *, kind: str = "dir", overwrite: bool = False,
                      is_own: Callable[[pathlib.Path], bool] | None = None,
                      sources: Iterable = (), what: str = "output",
                      flag: str = "--overwrite", record: dict | None = None,
                      resume: bool = False) -> None:
    """Refuse to write `dst` when that would destroy something.

    kind: 'dir' or 'file', what `dst` will be.
    record: {"command", "kind"} this command writes into the dir it makes
      (see `written_by`). A dir recording the same command and kind is
      replaced freely; one recording another command is always refused; with
      `overwrite`, one recording the same command (another kind) is replaced.
    is_own(path): True when every entry of an existing `dst` is one this
      command writes. Without a `record`, such a dir is the command's own
      (a workdir it resumes); with one, replacing a dir that has no record
      (written before records existed, or interrupted) needs `overwrite`,
      unless `resume`: the command finishes an interrupted output in place.
      A dir holding anything else is never replaced, `overwrite` or not; a
      bucket root is never a directory output.
    """
    check_not_source(dst, sources, what)
    if paths.is_url(dst):
        _check_destination_url(dst, kind, overwrite, is_own, what, flag, record, resume)
        return
    p = _resolved(dst)
    if p.exists() or p.is_symlink():
        if kind == "dir" and not p.is_dir():
            raise OutputError(f"{dst}: the {what} is a file, not a directory")
        if kind == "file" and p.is_dir():
            raise OutputError(f"{dst}: the {what} is a directory, not a file")
        empty = p.is_dir() and not any(p.iterdir())
        if not empty:
            _own_or_refuse(dst, p, kind=kind, overwrite=overwrite, is_own=is_own, what=what,
                           flag=flag, rec=record, resume=resume)
        if kind == "dir":
            check_writable_dir(dst, what)
        elif not os.access(p.parent, os.W_OK | os.X_OK):
            raise OutputError(f"{dst}: cannot replace the {what}: {p.parent} is not writable")
    else:
        check_writable_parent(dst, what)


def _check_destination_url(dst, kind, overwrite, is_own, what, flag, rec, resume) -> None:
    if is_bucket_root(dst):
        raise OutputError(f"{dst}: the {what} is a bucket root, which is never replaced or "
                          f"written into as a whole; give a prefix, e.g. "
                          f"{os.fspath(dst).rstrip('/')}/run1")
    paths.check_bucket(dst)
    is_dir, is_file = paths.isdir(dst), paths.isfile(dst)
    if not (is_dir or is_file):
        return
    if kind == "dir" and is_file:
        raise OutputError(f"{dst}: the {what} is a file, not a directory")
    if kind == "file" and is_dir:
        raise OutputError(f"{dst}: the {what} is a directory, not a file")
    empty = is_dir and not paths.listdir(dst)
    if not empty:
        _own_or_refuse(dst, os.fspath(dst), kind=kind, overwrite=overwrite, is_own=is_own,
                       what=what, flag=flag, rec=rec, resume=resume)


def only_entries(allowed: Callable[[str], bool]) -> Callable[[pathlib.Path | str], bool]:
    """is_own for directories: every entry's name is one the command writes.
    Takes a pathlib.Path (local) or a URL string."""
    def is_own(p) -> bool:
        return paths.isdir(p) and all(allowed(e) for e in paths.listdir(p))
    return is_own


def _objects(url) -> list[str]:
    """Relative names of every object under URL `url` ([] if none)."""
    fs, inner = paths._fs(url)
    inner = inner.rstrip("/")

    def find(fs, p):
        try:
            return fs.find(p)
        except FileNotFoundError:
            return []
    found = paths._remote("list", url, find)
    return sorted(f[len(inner) + 1:] for f in found if f.startswith(inner + "/"))


def upload_dir(local: pathlib.Path, dst, skip: Callable[[str], bool] | None = None) -> None:
    """Replace the objects under URL `dst` with the files of `local`.

    The caller has checked `dst` (check_destination: empty, or an earlier
    output of this command), and `local` is complete. GCS has no rename, so:
    the old top-level markers go first (from then on no command takes the
    prefix for a finished output, and no marker vouches for a mix of old and
    new files), then the new files, deepest first, the new markers last; only
    then the old objects the new output did not overwrite. Nothing outside
    `dst` and nothing the new output does not replace is deleted before the
    new output is complete; a crash leaves a prefix without a marker (which a
    rerun with --overwrite replaces), never a marker over a mix.
    """
    files = sorted((os.path.relpath(os.path.join(root, f), local).replace(os.sep, "/")
                    for root, _, names in os.walk(local) for f in names),
                   key=lambda r: (r in MARKER_FILES or r == "config.json", -r.count("/"), r))
    if skip is not None:
        files = [r for r in files if not skip(r)]
    old = _objects(dst)
    for rel in old:
        if rel in MARKER_FILES or rel in ("config.json", "bert_config.json"):
            paths.remove(paths.join(dst, rel))
    for rel in files:
        paths.copy_file(local / rel, paths.join(dst, *rel.split("/")))
    for rel in sorted(set(old) - set(files), key=lambda r: (-r.count("/"), r)):
        paths.remove(paths.join(dst, *rel.split("/")))


def write_dir_atomic(dst, writer: Callable[[pathlib.Path], None]) -> None:
    """writer(tmp) fills a temp sibling of `dst`, which then takes `dst`'s place.
    An old `dst` is renamed aside first and deleted only after the swap. For a
    URL: writer fills a local temp dir, then `upload_dir`."""
    if paths.is_url(dst):
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="bert_jax_out_"))
        try:
            try:
                writer(tmp)
            except BaseException:
                _remove_settled(tmp)
                raise
            upload_dir(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    dst = pathlib.Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    old = None
    try:
        try:
            writer(tmp)
        except BaseException:
            _remove_settled(tmp)
            raise
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


def _remove_settled(tmp: pathlib.Path, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Remove the temp dir of a failed write, and again while it comes back.
    orbax can fail on one array (a full disk) while tensorstore still finishes
    writing others, and its file driver recreates their parent directories:
    one removal would leave a half-written `.model.*` behind. Done once the dir
    stayed absent for `quiet_s` (at most `limit_s`)."""
    deadline = time.monotonic() + limit_s
    seen = time.monotonic()
    while time.monotonic() - seen < quiet_s and time.monotonic() < deadline:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            seen = time.monotonic()
        time.sleep(0.05)


def write_file_atomic(dst, writer: Callable[[pathlib.Path], None], suffix: str = "") -> None:
    """writer(tmp) writes a temp sibling of file `dst`, then renamed onto it;
    for a URL a local temp file, then uploaded once as the final object."""
    if paths.is_url(dst):
        tmpdir = pathlib.Path(tempfile.mkdtemp(prefix="bert_jax_out_"))
        try:
            tmp = tmpdir / f"{paths.name(dst)}{suffix}"
            writer(tmp)
            paths.copy_file(tmp, dst)
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
