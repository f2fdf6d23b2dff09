"""How every `python -m bert_jax.X` command starts and ends.

`cli.run(main)` replaces `absl.app.run(main)`: a bad command line (unknown
flag, unknown config field, a value of the wrong type, a config file that
does not load) and bad input found by `main` end with one line
`error: <what>` on stderr and the exit codes below, never a traceback.
Tracebacks stay for our own bugs.

Exit codes (README, "Exit codes"):
  0    done
  1    bad input or a failed run; the `error:` line names the file, line, field
  2    bad command line (flags, config fields, config file)
  75   preempted (SIGTERM) or interrupted (Ctrl-C) after saving a checkpoint:
       rerun the same command to continue (EX_TEMPFAIL of sysexits.h, which
       schedulers read as "retry", unlike 0 = finished)
  130  aborted by a second Ctrl-C: nothing saved beyond the last checkpoint
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings

from absl import app, flags

from bert_jax.cli.renamed_fields import renamed_error

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75
EXIT_ABORTED = 130


def _close_progress_bars() -> None:
    """A run that fails mid-loop still has its progress bar open, with no
    newline after its last redraw: close it (it ends its line) so the error
    stands on a line of its own instead of being glued to the bar."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close is no reason to hide the error
            pass


def error(message: str) -> None:
    """Print the one-line error (newlines folded, so it stays one line)."""
    _close_progress_bars()
    print("error: " + " ".join(str(message).split("\n")), file=sys.stderr, flush=True)


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or type(e).__name__}"
    if isinstance(e, KeyError):
        return f"unknown key {e.args[0]!r}" if e.args else "unknown key"
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0] if text else type(e).__name__


def _config_field_error(argv: list[str]) -> str | None:
    """For the first `--<config flag>.a.b=v` whose path does not exist in the
    loaded config: the flag, the unknown field and the fields there are."""
    for arg in argv[1:]:
        m = re.match(r"--?(\w+)\.([\w.]+)(=|$)", arg)
        if not m or m.group(1) not in flags.FLAGS:
            continue
        flag = flags.FLAGS[m.group(1)]
        spec = next((a.split("=", 1)[1] for a in argv[1:]
                     if re.match(rf"--?{m.group(1)}=", a)), "")
        try:
            node = flag.value
            if node is None:  # the override failed while the file was loading: reload it
                node = flag.parser.parse(spec)
        except Exception:  # noqa: BLE001 - the config itself failed; reported elsewhere
            return None
        if type(node).__name__ == "_ErrorConfig":  # the file did not load
            return _file_error(m.group(1), spec)
        if node is None or not hasattr(node, "keys"):
            continue
        parts = m.group(2).split(".")
        for i, part in enumerate(parts):
            if hasattr(node, "keys") and part in node:
                node = node[part]
                continue
            if i == 0 and len(parts) == 1:
                renamed = renamed_error(part, m.group(1))
                if renamed:
                    return renamed
            parent = ".".join([m.group(1), *parts[:i]])
            known = sorted(node.keys()) if hasattr(node, "keys") else []
            where = f"{parent} has no field {part!r}" if known else \
                f"{parent} is a value, not a group"
            return (f"--{m.group(1)}.{m.group(2)}: unknown config field: {where}"
                    + (f" (fields: {', '.join(known)})" if known else ""))
    return None


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")


def _is_ours(module: str) -> bool:
    """A flag-defining module of this package (or the script run as __main__)."""
    return "bert_jax" in module or module in (sys.argv[0], "__main__")


def help_text(flag_values=None) -> str:
    """The command's usage (its __main__ docstring) and its own flags; absl's
    generic flags (logging) only with --helpfull."""
    fv = flag_values if flag_values is not None else flags.FLAGS
    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
    full = "--helpfull" in sys.argv
    parts = [doc] if doc else []
    for module in sorted(fv.flags_by_module_dict()):
        if full or _is_ours(module):
            parts.append(fv.module_help(module).strip())
    if not full:
        parts.append("(--helpfull also lists absl's logging flags)")
    return "\n\n".join(parts) + "\n"


def maybe_help(argv: list[str], flag_values=None) -> None:
    """`--help` (and -h, --helpfull): print the usage and exit 0, as a command
    should (absl exits 1 and lists only its own module's flags)."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        sys.stdout.write(help_text(flag_values))
        sys.stdout.flush()
        sys.exit(EXIT_OK)


def configs_importable() -> None:
    """Config files import each other as `configs.pretrain.bert`; that package
    sits beside `bert_jax/` in the checkout, which is on sys.path only when
    the command runs from the repository root. Append the checkout (after the
    user's own paths) so commands run from any directory, with any config path,
    including a user's own config file that builds on ours."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(root, "configs", "__init__.py")) and root not in sys.path:
        sys.path.append(root)


def _config_file_error() -> str | None:
    """`--config=FILE: why` for a config flag whose file did not load (absl's
    config flag holds a placeholder that raises when any attribute is read)."""
    for name, flag in flags.FLAGS._flags().items():
        if type(flag).__name__ == "_ConfigFlag" and name == flag.name:
            if type(flag.value).__name__ == "_ErrorConfig":
                return _file_error(name, getattr(flag, "config_filename", ""))
    return None


def _file_error(name: str, spec) -> str:
    path = str(spec).split(":", 1)[0]
    why = "no such file" if path and not os.path.exists(path) else "the file does not load"
    return f"--{name}={spec}: {why}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (exit 2)."""
    maybe_help(argv)
    configs_importable()
    try:
        rest = flags.FLAGS(argv)
        msg = _config_file_error()
        if msg:
            error(msg)
            sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(EXIT_ABORTED)
    except Exception as e:  # noqa: BLE001 - every parse failure is a usage error
        msg = _config_field_error(argv)  # also a config file that did not load
        if msg is None:
            root = _root_cause(e)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if (root is not e or not msg) and _describe(root) not in msg:
                msg = (msg + ": " if msg else "") + _describe(root)
        error(msg)
        sys.exit(EXIT_USAGE)
    return rest


# What `main` may raise for bad input or a failed run: one line, exit 1.
INPUT_ERRORS = (ValueError, OSError, FloatingPointError)


COMPILE_CACHE_ENV = "BERT_JAX_COMPILE_CACHE"


def default_compile_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for this command, so that a
    rerun (a resume, the next seed or lr of a sweep, predict after fine-tuning)
    loads its compiled programs instead of compiling them again. The directory
    is $BERT_JAX_COMPILE_CACHE, else $XDG_CACHE_HOME/bert_jax/xla (~/.cache/...);
    BERT_JAX_COMPILE_CACHE=off, or JAX's own JAX_COMPILATION_CACHE_DIR /
    JAX_ENABLE_COMPILATION_CACHE=false, leave JAX's settings as they are. JAX
    caches only programs that took >= 1 s to compile. Returns the directory set."""
    setting = os.environ.get(COMPILE_CACHE_ENV, "")
    if setting.lower() in ("off", "0", "false") or os.environ.get("JAX_COMPILATION_CACHE_DIR") \
            or os.environ.get("JAX_ENABLE_COMPILATION_CACHE", "").lower() in ("false", "0"):
        return None
    path = setting or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "bert_jax", "xla")
    import jax  # only here: nothing else in this module uses JAX
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def run(main) -> None:
    """absl's app.run(main) with the exit codes above, and the default
    persistent compilation cache (default_compile_cache)."""

    def wrapped(argv):
        try:
            rc = main(argv)
            if rc in (None, EXIT_OK, EXIT_PREEMPTED) and "bert_jax.train.distributed" in \
                    sys.modules:
                sys.modules["bert_jax.train.distributed"].finished()
            return rc
        except app.UsageError as e:
            error(str(e))
            return EXIT_USAGE
        except INPUT_ERRORS as e:
            error(_describe(e))
            return EXIT_ERROR
        except KeyboardInterrupt:
            error("interrupted")
            return EXIT_ABORTED

    def parse_then_cache(argv):
        rest = parse_flags(argv)
        default_compile_cache()
        return rest

    try:
        app.run(wrapped, flags_parser=parse_then_cache)
    except SystemExit as e:
        if e.code not in (None, EXIT_OK):
            _release_failed_save_threads()
        if "bert_jax.train.distributed" in sys.modules:  # only a multi-process run returns
            sys.modules["bert_jax.train.distributed"].leave(e.code)
        raise


def _release_failed_save_threads() -> None:
    """Let the threads of a failed orbax save end, so that the process exits
    after its error line instead of 5 minutes later.

    orbax runs each part of an async save in a non-daemon thread that first
    waits, for up to its coordination timeout (300 s), for the signals of the
    parts before it. When a save fails (the GCS server died mid-save), the
    threads of the later parts wait for signals that never come, and the
    interpreter's exit joins them (py-spy: the main thread in
    threading._shutdown for 3.5 minutes). By the time a failed run gets here
    the loop has closed its checkpointer, which waits for every save to finish
    or fail, so a thread still waiting belongs to a failed save: cancel it
    (`_SignalingThread.cancel`: it returns without running its part once its
    wait ends), then send the signals it waits for. Only with orbax's
    in-process signaling: on multi-host the signals are shared with the other
    processes through JAX's coordination service, where they are not ours to
    set."""
    waiting = [t for t in threading.enumerate() if t.is_alive() and
               type(t).__name__ == "_SignalingThread" and type(t).__module__.startswith("orbax.")]
    if not waiting:
        return
    from orbax.checkpoint._src.futures import future, signaling_client  # loaded by the run already
    if type(signaling_client.get_signaling_client()).__name__ != \
            "ThreadSafeKeyValueSignalingClient":
        return
    try:
        for t in waiting:
            t.cancel()
        for t in waiting:
            future.set_signals(t._receive_signals, operation_id=t._operation_id)
    except AttributeError:  # another orbax: its exit waits as before
        return
    # Each cancelled part leaves its coroutine never awaited, by design: without
    # this, Python's warning for each would follow the error line at exit.
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                            category=RuntimeWarning)
