"""Parsing the string after ':' in `--config=path.py:key=value,flag` (as
big_vision's `parse_arg`): 'size=base,runlocal' -> {'size': 'base', 'runlocal': True}.
Values are converted to the type of the default."""

from __future__ import annotations


def parse_arg(arg: str | None, **defaults) -> dict:
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if key not in out:
            raise ValueError(f"config arg {item!r}: known keys are {', '.join(out)}")
        default = out[key]
        if not eq:
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config arg {key}={value!r}: expected true or false")
            out[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out
