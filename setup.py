"""Packaging for aemp_green (the user asked for a setup.py; pyproject.toml only names the backend)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "aemp_green" / "_version.py").read_text()
).group(1)

setup(
    name="aemp_green",
    version=VERSION,
    description="Erlang-style message passing for Python on gevent, wire-compatible with Perl's AnyEvent::MP 2.x",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-2-Clause",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["aemp_green", "aemp_green.*"]),
    package_data={"aemp_green": ["py.typed", "observer/static/*"]},
    install_requires=[
        "gevent>=24.2,<27",
        "greenlet>=3.0,<4",
        "ujson>=5.8,<7",
        "cbor2>=5.6,<7",
        "docopt-ng>=0.9,<1",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "hypothesis>=6.100,<7",
            "build>=1.0,<2",
            "ruff>=0.6,<1",
            "mypy>=1.8,<3",
            # so that tests/test_metrics.py runs in CI (the extra below, for users)
            "prometheus_client>=0.17,<1",
        ],
        # the setting `metrics`: Prometheus text format (aemp_green.metrics)
        "metrics": ["prometheus_client>=0.17,<1"],
        # bench/plot.py only; the tests and CI never import it
        "bench": ["matplotlib>=3.7,<4"],
    },
    # one `aemp` on PATH once installed: the console script. bin/aemp (the same program) is for
    # running from a checkout and ships in the sdist only, never installed.
    entry_points={"console_scripts": ["aemp = aemp_green.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: System :: Distributed Computing",
    ],
)
