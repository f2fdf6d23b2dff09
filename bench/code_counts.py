"""Counts of the package's shape, from its source by `ast` (nothing imported):

  head compares   comparisons (==, !=, in, not in) of a value against a head
                  name literal ('pretraining', 'classification', ...), i.e. code
                  asking "which head is this?" instead of asking the head
  imports         internal `bert_jax` imports at module level vs inside functions
  long modules    modules over 600 lines
  longest         the longest function or method (qualified name, lines)

    python bench/code_counts.py [--root DIR] [--json]

--root is a checkout's root (default: this one), e.g. a `git archive` of an
older commit, so the same script counts before and after.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib

# The head names of bert_jax/model/heads.py (_HEAD_LIST), fixed here so that an
# older checkout is counted against the same names.
HEAD_NAMES = frozenset({"pretraining", "classification", "regression", "span", "tagging",
                        "encoder"})
LONG = 600


def _strings(node: ast.AST) -> list[str]:
    """String literals `node` is, or holds as a tuple/list/set display."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def head_compares(tree: ast.AST) -> list[int]:
    """Line numbers of comparisons with a head-name literal on either side."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        ops_ok = all(isinstance(o, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for o in node.ops)
        sides = [node.left, *node.comparators]
        if ops_ok and any(HEAD_NAMES & set(_strings(s)) for s in sides):
            lines.append(node.lineno)
    return lines


def _internal(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "bert_jax" or a.name.startswith("bert_jax.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "bert_jax"
    return False


def imports(tree: ast.AST) -> tuple[int, list[int]]:
    """(internal imports outside any function, line numbers of those inside one)."""
    top, inside = 0, []

    def visit(node: ast.AST, in_function: bool) -> None:
        nonlocal top
        for child in ast.iter_child_nodes(node):
            if _internal(child):
                if in_function:
                    inside.append(child.lineno)
                else:
                    top += 1
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inside


def functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, lines) of every function and method."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + node.name
            if not isinstance(node, ast.ClassDef):
                yield name, node.end_lineno - node.lineno + 1
            yield from functions(node, name + ".")
        else:
            yield from functions(node, prefix)


def count(root: pathlib.Path) -> dict:
    pkg = root / "bert_jax"
    out = {"head_compares": {}, "imports_top": 0, "imports_in_functions": {},
           "modules_over_600": {}, "longest_function": ("", 0)}
    for path in sorted(pkg.rglob("*.py")):
        rel = str(path.relative_to(root))
        text = path.read_text()
        tree = ast.parse(text)
        if hc := head_compares(tree):
            out["head_compares"][rel] = hc
        top, inside = imports(tree)
        out["imports_top"] += top
        if inside:
            out["imports_in_functions"][rel] = inside
        if (n := len(text.splitlines())) > LONG:
            out["modules_over_600"][rel] = n
        for name, n in functions(tree):
            if n > out["longest_function"][1]:
                out["longest_function"] = (f"{rel}:{name}", n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parent.parent)
    ap.add_argument("--json", action="store_true", help="print the full counts as JSON")
    args = ap.parse_args()
    c = count(args.root)
    if args.json:
        print(json.dumps(c, indent=1))
        return
    inside = sum(len(v) for v in c["imports_in_functions"].values())
    print(f"head-name compares:        {sum(len(v) for v in c['head_compares'].values())} "
          f"in {len(c['head_compares'])} files")
    for rel, lines in c["head_compares"].items():
        print(f"  {rel}: lines {', '.join(map(str, sorted(lines)))}")
    print(f"internal imports:          {c['imports_top']} at module level, {inside} inside "
          f"functions ({len(c['imports_in_functions'])} files)")
    print(f"modules over {LONG} lines:    {len(c['modules_over_600'])}  "
          + ", ".join(f"{k} {v}" for k, v in sorted(c["modules_over_600"].items(),
                                                   key=lambda kv: -kv[1])))
    name, n = c["longest_function"]
    print(f"longest function:          {name} ({n} lines)")


if __name__ == "__main__":
    main()
