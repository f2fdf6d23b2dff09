"""JSON read from a user's file: every failure is one line naming the file.

json.loads raises JSONDecodeError for bad syntax, but RecursionError for a
deeply nested document ([[[[...]]]] some thousands deep; the C parser checks
the recursion limit, so this is an exception, not a crash) and
UnicodeDecodeError for bytes that are not UTF-8; none of them names the file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bert_jax.storage import paths


class JsonInputError(ValueError):
    """A user's JSON file that cannot be read (the message names it)."""


def loads(text: str | bytes, source: str | os.PathLike, line: int | None = None) -> Any:
    """json.loads(text); errors name `source` (and `line` of a JSON-lines file)."""
    where = f"{os.fspath(source)}" + (f":{line}" if line is not None else "")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonInputError(f"{where}: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"line {e.lineno}" if line is None else f"column {e.colno}"
        raise JsonInputError(f"{where}: invalid JSON at {at}: {e.msg}") from None
    except RecursionError:
        raise JsonInputError(f"{where}: JSON nested too deeply") from None


def read(path: str | os.PathLike) -> Any:
    """The JSON document in file `path` (local or gs://)."""
    return loads(paths.read_bytes(path), path)
