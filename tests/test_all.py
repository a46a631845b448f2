"""The package surface: ``from aemp_green import *`` gives exactly ``__all__``, and every public
function and class there documents itself with an example."""

import inspect

import pytest

import aemp_green

#: public names whose docstring has no "Example" yet (each one is a reported documentation bug)
MISSING_EXAMPLE = set()

PUBLIC = [n for n in aemp_green.__all__ if n != "__version__"]


def test_star_import_matches_all():
    """A star-import of aemp_green binds exactly the names in ``__all__``."""
    ns = {}
    exec("from aemp_green import *", ns)  # noqa: S102 - the point of the test
    ns.pop("__builtins__", None)
    assert sorted(ns) == sorted(aemp_green.__all__)
    assert len(set(aemp_green.__all__)) == len(aemp_green.__all__), "duplicates in __all__"


def test_all_names_exist_and_are_public():
    """Every name in ``__all__`` exists and none is private (except ``__version__``)."""
    for name in aemp_green.__all__:
        assert hasattr(aemp_green, name), name
        assert name == "__version__" or not name.startswith("_"), name
    assert isinstance(aemp_green.__version__, str) and aemp_green.__version__


def test_core_api_names_exported():
    """docs/api.md sections Identity, Ports and messages, Monitoring, Calls: every name is
    public."""
    for name in (
        "NODE",
        "node_id",
        "SELF",
        "node_of",
        "port_is_local",
        "port",
        "rcv",
        "snd",
        "kil",
        "spawn",
        "receive",
        "receive_match",
        "psub",
        "peval",
        "after",
        "mon",
        "mon_guard",
        "cal",
        "call",
        "Timeout",
        "PortDied",
    ):
        assert name in aemp_green.__all__, name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=pytest.mark.xfail(
                strict=True, reason="BUG: docstring of %s has no 'Example' section" % n
            ),
        )
        if n in MISSING_EXAMPLE
        else n
        for n in PUBLIC
    ],
)
def test_public_name_has_example_in_docstring(name):
    """Every function and class in ``__all__`` has a docstring containing "Example"."""
    obj = getattr(aemp_green, name)
    assert inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj), name
    doc = inspect.getdoc(obj) or ""
    assert "Example" in doc, "%s: docstring has no Example" % name
