"""The sdist and the wheel build cleanly and hold what they must (issue: packaging).

Builds both with ``python -m build`` (an isolated build, as a packager would) into a temporary
directory, then checks the contents: the sdist ships the license, the changelog, docs, examples
and the complete test suite with what it loads (so ``pytest`` runs from the unpacked sdist:
checked by collecting it there); the wheel installs exactly one ``aemp`` (the console script),
declares every package the code imports directly, and carries the license.
"""

import ast
import subprocess
import sys
import tarfile
import zipfile

import pytest

from netutil import REPO

# slow (docs/testing.md): builds an sdist and a wheel, ~35 s on a busy 2-core machine
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def _version():
    return ast.literal_eval(
        (REPO / "aemp_green" / "_version.py").read_text().split("=", 1)[1].strip()
    )


def test_one_version_source():
    """The version is written once, in _version.py; setup.py reads it from there."""
    v = _version()
    hits = [
        p
        for p in list(REPO.glob("*.py")) + list(REPO.glob("*.toml")) + list(REPO.glob("*.cfg"))
        if v in p.read_text()
    ]
    assert hits == [], "the version is written again in %s" % hits
    assert ("## %s" % v) in (REPO / "CHANGELOG.md").read_text(), "CHANGELOG has no entry for " + v


def test_sdist_contents(dists, tmp_path):
    sdist, _ = dists
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        tf.extractall(tmp_path, filter="data")
    for must in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "docs/security.md",
        "examples/demo.py",
        "tests/conftest.py",
        "tests/netutil.py",
        "tests/child.py",
        "fuzz/fuzz_parsers.py",
        "bench/remote.py",
        "bin/aemp",
    ):
        assert must in names, "%s missing from the sdist" % must
    assert any(n.startswith("tests/interop/") for n in names), "interop recordings missing"
    assert any(n.startswith("fuzz/corpus/") for n in names), "fuzz seed corpus missing"
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    # the tests run from the unpacked sdist: collecting them imports every test module and
    # what it loads
    (root,) = tmp_path.iterdir()
    repo_count = _collect(REPO)
    proc_count = _collect(root)
    assert proc_count == repo_count, (proc_count, repo_count)


def _collect(root):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=str(root),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(root),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = [ln for ln in proc.stdout.splitlines() if "collected" in ln or "tests collected" in ln]
    assert last, proc.stdout[-2000:]
    return last[-1].split()[0]


def _env(root):
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)
    return env


def test_wheel_contents(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        eps = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "aemp_green/py.typed" in names
    for static in ("index.html", "observer.js", "observer.css"):  # the observer's page
        assert "aemp_green/observer/static/" + static in names
    # every module of the package, subpackages (cli/, wire/, ...) included
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "aemp_green").rglob("*.py")}
    assert not modules - set(names), "not in the wheel: %s" % sorted(modules - set(names))
    assert any(
        n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names
    )
    # one aemp on PATH: the console script, no copy of bin/aemp as a data script
    assert "aemp = aemp_green.cli:main" in eps
    assert not any(".data/scripts/" in n for n in names), names

    # every package the library imports directly is declared (the optional ones in an extra,
    # such as prometheus_client in aemp_green[metrics])
    def dist_names(extra):
        """Requirements of the library itself (``extra`` False) or of its optional extras."""
        return {
            ln.split(":", 1)[1]
            .strip()
            .split("<")[0]
            .split(">")[0]
            .split("=")[0]
            .split(";")[0]
            .strip()
            .lower()
            .replace("-", "_")
            for ln in meta.splitlines()
            if ln.startswith("Requires-Dist:")
            and ("extra ==" in ln) == extra
            and "extra == \"test\"" not in ln
        }

    requires = dist_names(False)
    optional = dist_names(True)
    imported = set()
    for path in (REPO / "aemp_green").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"aemp_green"}
    dist_of = {"docopt": "docopt_ng"}
    missing = {m for m in third_party if dist_of.get(m, m).lower() not in requires | optional}
    assert not missing, "imported but not declared in install_requires: %s" % sorted(missing)
