"""Paths that may be local or `gs://` URLs: every file we open, list, rename or
delete goes through here.

Local paths keep exactly the behaviour they had (pathlib/os, write to a temp
file then `os.replace`). URLs go through fsspec + gcsfs: on object storage an
object appears whole when its single upload finishes, so `write_bytes` uploads
the final name once instead of writing a temp object and renaming it (a GCS
"rename" is a copy plus a delete, not atomic). Checkpoints go through orbax,
which marks a finished step on gs:// with `commit_success.txt`.

Against a local emulator (`STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`, the
variable google-cloud-storage and gcsfs honour) importing this module points
the other layers at it as well: TensorStore (orbax's array writer) through
`TENSORSTORE_GCS_HTTP_URL` and a test token, gcsfs with anonymous credentials
(no lookup of default credentials, which would ask the GCE metadata server),
and gcsfs's gRPC bucket-type probe off (against an emulator it waits 60 s per
bucket before falling back to HTTP). etils.epath (orbax's path type) is told
to use fsspec rather than TensorFlow's gfile for gs://, so one client does all
our object I/O whether or not TensorFlow is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from urllib.parse import quote

import fsspec.config
import fsspec.core
from fsspec.asyn import sync

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def configure() -> None:
    """Derive the other layers' settings from STORAGE_EMULATOR_HOST (run at
    import; again after setting the variable in-process)."""
    os.environ.setdefault("EPATH_USE_TF", "false")
    # No listing cache: other hosts and TensorStore write the same bucket, and
    # orbax lists checkpoint steps through its own gcsfs instances (one per
    # thread), which our invalidations would not reach.
    fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
    # gcsfs logs a traceback when its retries run out; StorageError says it in one line.
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    emulator = os.environ.get(EMULATOR_ENV, "")
    if emulator in ("", "default"):
        return
    if "://" not in emulator:
        emulator = f"http://{emulator}"
    # Set, not defaulted: an inherited value for another server would split
    # the checkpoint arrays (TensorStore) from everything else (gcsfs).
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = emulator
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    # Read when gcsfs is imported (gcsfs/__init__.py), so before any gs:// use.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    fsspec.config.conf["gs"].setdefault("token", "anon")


configure()


class StorageError(OSError):
    """An object-storage operation that failed (server down, no such bucket);
    its message is one line naming the URL."""


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def join(base, *parts: str) -> str:
    """`base/part/...` for a URL or a local path (strings; `pathlib` would turn
    `gs://b` into `gs:/b`)."""
    base = os.fspath(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def name(path) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path) -> str:
    path = os.fspath(path)
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def orbax_path(path):
    """The path type orbax takes: etils.epath.Path for a URL, an absolute
    pathlib.Path otherwise."""
    if is_url(path):
        # orbax's path type: only checkpoint paths need it
        from etils import epath
        return epath.Path(os.fspath(path))
    return pathlib.Path(os.path.abspath(path))


def _fs(path):
    fs, inner = fsspec.core.url_to_fs(os.fspath(path))
    return fs, inner


def _remote(op: str, path, fn):
    """Run fn(fs, inner_path); turn transport failures into one-line StorageErrors."""
    fs, inner = _fs(path)
    try:
        return fn(fs, inner)
    except (FileNotFoundError, FileExistsError):
        raise
    except Exception as e:  # noqa: BLE001 - aiohttp/gcsfs errors of many kinds
        first = (str(e).splitlines() or [""])[0][:200]
        raise StorageError(f"{path}: {op} failed ({type(e).__name__}: {first})") from None


def _query(path, local, method: str):
    """local(path) for a local path, else fs.<method>(path)."""
    if not is_url(path):
        return local(path)
    return _remote(method, path, lambda fs, p: getattr(fs, method)(p))


def exists(path) -> bool:
    return _query(path, os.path.exists, "exists")


def isdir(path) -> bool:
    return _query(path, os.path.isdir, "isdir")


def isfile(path) -> bool:
    return _query(path, os.path.isfile, "isfile")


def listdir(path) -> list[str]:
    """Names of the entries directly under `path` (sorted); [] if it does not exist."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def ls(fs, p):
        try:
            return sorted(name(e) for e in fs.ls(p, detail=False) if e.rstrip("/") != p)
        except FileNotFoundError:
            return []
    return _remote("list", path, ls)


def makedirs(path) -> None:
    """mkdir -p locally. Object storage has no directories: check instead that
    the bucket exists, so a typo fails now, naming the URL."""
    if not is_url(path):
        pathlib.Path(path).mkdir(parents=True, exist_ok=True)
        return
    check_bucket(path)


def check_bucket(path) -> None:
    if not is_url(path):
        return
    fs, inner = _fs(path)
    bucket = inner.split("/", 1)[0]
    proto = os.fspath(path).split("://", 1)[0]

    def check(fs, b):
        try:
            fs.ls(b, detail=False)
        except FileNotFoundError:
            return False
        return True
    if not _remote("bucket check", f"{proto}://{bucket}", check):
        raise StorageError(f"{path}: bucket {proto}://{bucket} does not exist")


def read_bytes(path) -> bytes:
    if not is_url(path):
        return pathlib.Path(path).read_bytes()
    return _remote("read", path, lambda fs, p: fs.cat_file(p))


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
    """Atomically: locally a temp file renamed into place; on object storage one
    upload of the final object (it is visible only once complete)."""
    if not is_url(path):
        path = pathlib.Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    _remote("write", path, lambda fs, p: fs.pipe_file(p, data))


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def copy_file(src, dst) -> None:
    """Copy one file between any two locations (atomic at the destination)."""
    if not is_url(src) and not is_url(dst):
        tmp = pathlib.Path(dst).with_name(f".{name(dst)}.tmp-{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return
    if not is_url(src):
        _remote("upload", dst, lambda fs, p: fs.put_file(os.fspath(src), p))
        return
    write_bytes(dst, read_bytes(src))


def rename(src, dst) -> None:
    """Locally os.replace; on object storage copy + delete (not atomic: use it
    only to move things aside, never to publish a result)."""
    if not is_url(src):
        os.replace(src, dst)
        return
    _remote("move", src, lambda fs, p: fs.mv(p, _fs(dst)[1], recursive=True))


def remove(path) -> None:
    """Delete a file or a whole directory tree (no error if absent)."""
    if not is_url(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return

    def rm(fs, p):
        try:
            fs.rm(p, recursive=True)
        except FileNotFoundError:
            pass
    _remote("delete", path, rm)


def upload_tree(local_dir, url) -> None:
    """Copy a local directory's files to `url/` (each object written once)."""
    for root, _, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        for f in files:
            dst = join(url, f) if rel == "." else join(url, *rel.split(os.sep), f)
            copy_file(os.path.join(root, f), dst)


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("BERT_JAX_CACHE")
                        or pathlib.Path.home() / ".cache" / "bert_jax")


def local_copy(path, key: str = "") -> pathlib.Path:
    """A local path with the contents of `path` (a file or a directory tree).
    Local paths are returned as they are; a URL is downloaded once into the
    cache (under a name from the URL and `key`, e.g. a content fingerprint, so
    changed data is fetched again) and reused by later calls and processes."""
    if not is_url(path):
        return pathlib.Path(path)
    url = os.fspath(path).rstrip("/")
    is_dir = isdir(url)
    if not is_dir:  # a file's cached copy is tied to its content
        info = _remote("stat", url, lambda fs, p: fs.info(p))
        key += f"\n{info.get('md5Hash') or info.get('etag')}\n{info.get('size')}"
    digest = hashlib.sha256(f"{url}\n{key}".encode()).hexdigest()[:16]
    dest = cache_root() / "gcs" / digest
    out = dest if is_dir else dest / name(url)
    if out.exists():
        return out
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=dest.parent))
    try:
        if is_dir:
            _remote("download", url, lambda fs, p: fs.get(p + "/", str(tmp) + "/",
                                                          recursive=True))
        else:
            _remote("download", url, lambda fs, p: fs.get_file(p, str(tmp / name(url))))
        try:
            os.replace(tmp, dest)  # another process may have finished first: keep its copy
        except OSError:
            if not out.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def staged_dir(path):
    """A local directory whose files end up at `path`: `path` itself when it is
    local; for a URL a temp dir whose files are uploaded (each object once)
    when the block ends without an error, then deleted. For code that writes
    files with ordinary open()/np.save (evaluation and prediction files)."""
    if not is_url(path):
        pathlib.Path(path).mkdir(parents=True, exist_ok=True)
        yield pathlib.Path(path)
        return
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bert_jax_stage_"))
    try:
        yield tmp
        upload_tree(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def create_exclusive(path, data: bytes) -> bool:
    """Write object `path` only if it does not exist (GCS precondition
    ifGenerationMatch=0, checked by the server); False when it exists."""
    def create(fs, p):
        try:
            fs.pipe_file(p, data, mode="create")
        except FileExistsError:
            return False
        return True
    return _remote("exclusive create", path, create)


def generation(path) -> str | None:
    """The object's generation (changes on every rewrite); None if absent."""
    def gen(fs, p):
        try:
            return str(fs.info(p).get("generation") or "") or None
        except FileNotFoundError:
            return None
    return _remote("stat", path, gen)


def remove_generation(path, gen: str) -> bool:
    """Delete object `path` only if it is still generation `gen` (False when it
    was rewritten or deleted meanwhile)."""

    def rm(fs, p):
        bucket, key = p.split("/", 1)
        try:
            sync(fs.loop, fs._call, "DELETE", "b/{}/o/{}", bucket, key,
                 ifGenerationMatch=gen)
        except (FileNotFoundError, FileExistsError):  # 404 / 412: not ours any more
            return False
        fs.invalidate_cache(p)
        return True
    return _remote("delete", path, rm)


def write_if_generation(path, data: bytes, gen: str) -> str | None:
    """Rewrite object `path` only if it is still generation `gen` (GCS
    precondition ifGenerationMatch, checked by the server): its new generation,
    or None when it was rewritten or deleted meanwhile. One upload (multipart,
    as gcsfs writes objects, so that emulators check the precondition too), so
    the object changes whole or not at all."""

    def up(fs, p):
        bucket, key = p.split("/", 1)
        body = (b'--==0==\nContent-Type: application/json; charset=UTF-8\n\n'
                + json.dumps({"name": key}).encode()
                + b"\n--==0==\nContent-Type: application/octet-stream\n\n" + data
                + b"\n--==0==--")
        try:
            j = sync(fs.loop, fs._call, "POST",
                     f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                     uploadType="multipart", ifGenerationMatch=gen,
                     headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                     data=body, json_out=True)
        except (FileNotFoundError, FileExistsError):  # 404 / 412: not ours any more
            return None
        fs.invalidate_cache(p)
        return str(j.get("generation") or "") or None
    return _remote("conditional write", path, up)
