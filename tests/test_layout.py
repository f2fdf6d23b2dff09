"""The package layout: no import cycles (every import counted, also those inside
functions), commands at the top level, and the console scripts of pyproject.toml
run the same modules as `python -m bert_jax.<name>`."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "bert_jax"


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import submodule` depends on the submodule, `from mod import x` on mod.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            else:
                continue
            for t in targets:
                o = owner(t) if t.startswith("bert_jax") else None
                if o and o != m:
                    graph[m].add(o)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_lazy_cycle():
    # The checker itself: a cycle through a function-level import is found.
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_console_scripts_run_the_python_m_modules():
    from bert_jax import scripts

    entries = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(entries) >= 10
    for name, target in entries.items():
        module, _, attr = target.partition(":")
        assert module == "bert_jax.scripts", name
        run = getattr(scripts, attr)
        python_m = run.__doc__.removeprefix("python -m ")
        assert importlib.util.find_spec(python_m) is not None, (name, python_m)
        assert name == "bert-jax-" + attr.replace("_", "-")
    # One of them end to end: the script prints what `python -m` prints, with its exit status.
    def run(*cmd):
        r = subprocess.run([sys.executable, *cmd, "--help"], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        return r.returncode, r.stdout.replace("-c", "").split("flags:", 1)[-1]

    script = run("-c", "from bert_jax import scripts; scripts.inspect()")
    assert "--num_examples" in script[1]
    assert script == run("-m", "bert_jax.data.inspect_batches")
def test_top_level_modules_are_commands():
    # Library code lives in the role folders; the top level holds the commands.
    for p in sorted(PKG.glob("*.py")):
        if p.name in ("__init__.py", "scripts.py"):
            continue
        assert 'if __name__ == "__main__":' in p.read_text(), f"{p.name} is not a command"


