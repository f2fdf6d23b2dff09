"""The package layout: no import cycles (every import counted, also those inside
functions), no module importing from a layer above its own, commands at the top
level, and the console scripts of pyproject.toml run the same modules as
`python -m bert_jax.<name>`."""

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


def import_edges() -> dict[tuple[str, str], int]:
    """{(module, bert_jax module it imports): first line} for every import,
    at the top of a module or inside a function."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[tuple[str, str], int] = {}
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
                    edges[(m, o)] = min(edges.get((m, o), node.lineno), node.lineno)
    return edges


def import_graph() -> dict[str, set[str]]:
    graph = {m: set() for m in _modules()}
    for m, o in import_edges():
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


# The layers, lowest first: a module imports from its own layer or lower ones,
# never from a higher one. Derived from the import graph: storage and cli need
# nothing of ours; the model, the data pipeline and the TPU slice tables need
# only those; the
# checkpoint file formats need the model (and the tokenizer); training writes
# model dirs; reading any checkpoint (a training workdir included) needs the
# trainer's checkpoints; fine-tuning reads checkpoints; commands sit on top.
LAYERS = (
    ("foundation", ("bert_jax", "bert_jax.storage", "bert_jax.cli")),
    ("model, data, tpu", ("bert_jax.model", "bert_jax.data", "bert_jax.tpu")),
    ("checkpoint formats", ("bert_jax.convert", "bert_jax.convert.model_dir",
                            "bert_jax.convert.hf_format", "bert_jax.convert.tf1_format",
                            "bert_jax.convert.bounds")),
    ("train", ("bert_jax.train",)),
    ("any checkpoint", ("bert_jax.convert.formats",)),
    # conlleval is also a script (as the Perl original is), but the CoNLL task imports it.
    ("fine-tuning", ("bert_jax.finetune", "bert_jax.finetune.conlleval")),
    ("commands", ("bert_jax.scripts", "bert_jax.devtools")),
)


def _is_command(module: str) -> bool:
    p = _modules()[module]
    return p.name == "__main__.py" or 'if __name__ == "__main__":' in p.read_text()


def layer_of(module: str) -> int:
    """Index into LAYERS: the layer naming `module` itself; else a command's
    module is a command wherever it lives; else the layer naming the longest
    prefix of `module`."""
    for i, (_, prefixes) in enumerate(LAYERS):
        if module in prefixes:
            return i
    if _is_command(module):
        return len(LAYERS) - 1
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and pre.count(".") > depth:
                best, depth = i, pre.count(".")
    assert best is not None, f"{module}: in no layer; add it to LAYERS in tests/test_layout.py"
    return best


def upward_imports(edges: dict[tuple[str, str], int], layer) -> list[str]:
    """'a (layer) imports b (higher layer), line N' for each import from above."""
    bad = []
    for (m, o), line in sorted(edges.items()):
        lm, lo = layer(m), layer(o)
        if lo > lm:
            bad.append(f"{m} ({LAYERS[lm][0]}) imports {o} ({LAYERS[lo][0]}) at line {line}")
    return bad


def test_layering_checker_sees_an_import_from_above():
    # The checker itself: one function-level import from a higher layer is named.
    layers = {"bert_jax.model.heads": 1, "bert_jax.train.losses": 3, "bert_jax.storage": 0}
    edges = {("bert_jax.model.heads", "bert_jax.storage"): 3,
             ("bert_jax.model.heads", "bert_jax.train.losses"): 259}
    assert upward_imports(edges, layers.get) == [
        "bert_jax.model.heads (model, data, tpu) imports bert_jax.train.losses (train) at line 259"]


def test_no_module_imports_from_a_layer_above_it():
    bad = upward_imports(import_edges(), layer_of)
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)

