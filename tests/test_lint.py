"""The tree stays clean and layered (docs: README "Shape of the code"):

* ``ruff check`` (pyflakes rules, configured in pyproject.toml) finds nothing anywhere;
* ``mypy`` (strict on the public API modules, default on the rest: pyproject.toml) finds
  nothing in the package;
* the package has no import cycle, function-level imports included: a lower layer never
  imports a higher one (kernel < node < globaldb < services, API on top);
* every function has type annotations (but for the modules listed in ``UNANNOTATED_MODULES``).
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netutil import REPO

PKG = REPO / "aemp_green"


def _ruff():
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    return exe if Path(exe).exists() else None


def test_ruff_finds_nothing():
    ruff = _ruff()
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    proc = subprocess.run(
        [ruff, "check", "--output-format", "concise", str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_finds_nothing():
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
    )
    if "No module named mypy" in proc.stderr:
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _module_name(path):
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph():
    """``{module: {modules of the package it imports}}``, imports inside functions included."""
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in mods.items():
        out = graph.setdefault(mod, set())
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [
                    target + "." + a.name if target + "." + a.name in mods else target
                    for a in node.names
                ]
            for name in names:
                while name and name not in mods and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in mods and name != mod:
                    out.add(name)
    return graph


def test_no_import_cycles():
    graph = import_graph()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cyclic = sorted(m for m in graph if m in reach(m))
    assert not cyclic, "import cycle among: %s" % " ".join(cyclic)


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    """The check above is not vacuous: a made-up package with a function-level cycle fails."""
    pkg = tmp_path / "aemp_green"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from . import high\n")
    (pkg / "high.py").write_text("from . import low\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    with pytest.raises(AssertionError, match="import cycle among: aemp_green.high aemp_green.low"):
        test_no_import_cycles()


#: The layers, bottom up (README "Layout"): a module may import only modules listed before it.
#: ``cli`` is the ``aemp`` program on top of the public API (the package imports it nowhere):
#: ``cli.base`` (what every subcommand module uses) at its bottom, the subcommand modules, then
#: ``cli`` (``main``, which imports them all) and ``cli.__main__``.
LAYERS = [
    "_version",
    "_protocol",
    "_report",
    "_ratelog",
    "exceptions",
    "_guard",
    "_hub",
    "config.addresses",
    "config.settings",
    "config.rcfile",
    "config",
    "wire",
    "wire.handshake",
    "wire.framing",
    "globaldb.store",
    "kernel",
    "ports",
    "transport",
    "connect",
    "trace",
    "node",
    "globaldb.sync",
    "globaldb",
    "dataconn",
    "logcatcher",
    "supervisor",
    "introspect",
    "metrics",
    "observer.server",
    "observer",
    "runtime",
    "threaded",
    "aio",
    "monkey",
    "",
    "cli.base",
    "cli.settings",
    "cli.run",
    "cli.talk",
    "cli.inspect",
    "cli",
    "cli.__main__",
]


def test_imports_go_down_the_layers():
    order = {("aemp_green." + m) if m else "aemp_green": i for i, m in enumerate(LAYERS)}
    graph = import_graph()
    unknown = sorted(m for m in graph if m not in order)
    assert not unknown, "modules missing from LAYERS (place them): %s" % unknown
    upward = sorted(
        "%s -> %s" % (m, o) for m, outs in graph.items() for o in outs if order[o] >= order[m]
    )
    assert not upward, "imports going up the layers: %s" % ", ".join(upward)


def test_no_module_uses_another_modules_private_names():
    """An internal module exposes plain names to the others (``kernel.spawn_raw``, not
    ``kernel._spawn_raw``): no ``<module>._name`` across the package's modules."""
    bad = []
    module_stems = {p.stem for p in PKG.rglob("*.py")} | {
        p.parent.name for p in PKG.rglob("__init__.py")
    }
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("aemp_green")
            ):
                for a in node.names:
                    target = ((node.module or "") + "." + a.name).lstrip(".")
                    if a.name in module_stems or target.startswith("aemp_green"):
                        aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("aemp_green"):
                        aliases.add((a.asname or a.name).split(".")[0])
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append("%s:%d %s.%s" % (path.name, node.lineno, node.value.id, node.attr))
    assert not bad, "private names used across modules: %s" % ", ".join(bad)


def test_public_functions_are_fully_annotated():
    """Every function of the public API (``aemp_green.__all__``) has a type for each parameter
    and its return value (the package ships ``py.typed``; mypy checks their bodies)."""
    import inspect

    import aemp_green

    missing = []
    for name in aemp_green.__all__:
        obj = getattr(aemp_green, name)
        if not inspect.isfunction(obj):
            continue
        sig = inspect.signature(obj)
        if sig.return_annotation is inspect.Signature.empty:
            missing.append("%s -> ?" % name)
        missing += [
            "%s(%s)" % (name, p.name)
            for p in sig.parameters.values()
            if p.annotation is inspect.Parameter.empty
        ]
    assert not missing, "public functions without types: %s" % ", ".join(missing)


#: Modules allowed to have unannotated functions (none now; the check below shows the mechanism).
UNANNOTATED_MODULES: tuple[str, ...] = ()
#: Functions of annotated modules allowed without types: an entry that no longer names an
#: unannotated function fails the test.
UNANNOTATED_FUNCTIONS: set[str] = set()


def _unannotated(tree):
    """``(qualified name, line, what is missing)`` for every function in ``tree`` (methods and
    nested functions included) lacking a parameter type (``self``/``cls`` excepted) or its
    return type."""
    out = []

    def walk(node, prefix, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".", True)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                params = a.posonlyargs + a.args + a.kwonlyargs
                params += [p for p in (a.vararg, a.kwarg) if p is not None]
                if in_class and (a.posonlyargs + a.args)[:1] and params[0].arg in ("self", "cls"):
                    params = params[1:]
                missing = [p.arg for p in params if p.annotation is None]
                if child.returns is None:
                    missing.append("return")
                if missing:
                    out.append((prefix + child.name, child.lineno, missing))
                walk(child, prefix + child.name + ".", False)
            else:
                walk(child, prefix, in_class)

    walk(tree, "", False)
    return out


def test_every_function_is_annotated():
    """Every function and method of the package has a type for each parameter and its return
    value (mypy then checks their bodies: pyproject.toml), but for ``UNANNOTATED_MODULES`` and
    ``UNANNOTATED_FUNCTIONS``."""
    missing, seen = [], set()
    for path in sorted(PKG.rglob("*.py")):
        mod = ".".join(path.relative_to(PKG).with_suffix("").parts)
        mod = mod[: -len(".__init__")] if mod.endswith(".__init__") else mod
        if mod == "__init__":
            mod = ""
        if any(mod == m or mod.startswith(m + ".") for m in UNANNOTATED_MODULES):
            continue
        for name, line, what in _unannotated(ast.parse(path.read_text())):
            qual = "%s.%s" % (mod, name) if mod else name
            if qual in UNANNOTATED_FUNCTIONS:
                seen.add(qual)
                continue
            missing.append("%s:%d %s (%s)" % (path.relative_to(PKG), line, name, ", ".join(what)))
    assert not missing, "functions without types: %s" % "; ".join(missing)
    stale = sorted(UNANNOTATED_FUNCTIONS - seen)
    assert not stale, "UNANNOTATED_FUNCTIONS entries to delete (gone or typed): %s" % stale


def test_the_annotation_check_can_fail(tmp_path, monkeypatch):
    """The check above is not vacuous: a made-up package with a method lacking a parameter type
    and a nested function lacking its return type fails; the allowlisted module does not."""
    pkg = tmp_path / "aemp_green"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def ok(x: int, *a: str, **k: float) -> None: ...\n")
    (pkg / "low.py").write_text(
        "class C:\n"
        "    def m(self, x) -> int:\n"
        "        return x\n"
        "    @classmethod\n"
        "    def k(cls) -> None:\n"
        "        def inner(y: int):\n"
        "            return y\n"
    )
    (pkg / "legacy.py").write_text("def untyped(a, b):\n    return a\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    monkeypatch.setattr(sys.modules[__name__], "UNANNOTATED_MODULES", ("legacy",))
    monkeypatch.setattr(sys.modules[__name__], "UNANNOTATED_FUNCTIONS", set())
    with pytest.raises(AssertionError) as err:
        test_every_function_is_annotated()
    text = str(err.value)
    assert "low.py:2 C.m (x)" in text and "low.py:6 C.k.inner (return)" in text, text
    assert "legacy.py" not in text and "__init__.py" not in text, text
    # and a stale allowlist entry fails too
    (pkg / "low.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "UNANNOTATED_FUNCTIONS", {"low.gone"})
    with pytest.raises(AssertionError, match="entries to delete .*low.gone"):
        test_every_function_is_annotated()
