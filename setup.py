"""Version scheme for setuptools-scm (everything else is in pyproject.toml).

A release is a tag ``vX.Y.Z``: its version is ``X.Y.Z``; commits after it are ``X.Y.(Z+1).devN+gHASH``.
Before the first release tag (and in a clone without tags) commits are ``0.2.0.devN+gHASH``: 0.1.0 was
the last hand-written version, 0.2.0 is the first tagged one.
"""

from __future__ import annotations

from typing import Any

from setuptools import setup

FIRST_RELEASE = "0.2.0"


def version_scheme(version: Any) -> str:
    from setuptools_scm.version import guess_next_dev_version

    if str(version.tag) == "0.0":  # no release tag reachable
        return f"{FIRST_RELEASE}.dev{version.distance or 0}"
    return str(guess_next_dev_version(version))


if __name__ == "__main__":  # as setuptools runs it (the tests import version_scheme alone)
    setup(use_scm_version={"version_scheme": version_scheme})
