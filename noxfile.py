"""Sessions: tests, lint, typecheck, binary, bench; each installs the project into its own venv."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: unit, integration (real Redis, Kafka, etcd) and e2e, 2 workers."""
    _install(session, ".[test]")
    session.run("python", "-m", "pytest", "-n", "2", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The reliability matrix at full size (docs/reliability.md): longer outages, more kills."""
    _install(session, ".[test]")
    session.run(
        "python", "-m", "pytest", "-n", "2", "-m", "reliability", *session.posargs,
        env={"ROUTERCTL_SOAK": "1"},
    )  # fmt: skip
    session.run("python", "-m", "tests.reliability_matrix", "--write")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format) and the import-linter contracts of DESIGN.md's layout."""
    _install(session, ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the appliance and the CLI."""
    _install(session, ".[dev]")
    session.run("mypy", "--strict", "appliance", "routerctl")


@nox.session
def binary(session: nox.Session) -> None:
    """One-file PyInstaller executable dist/routerctl, version, commit and build time baked in."""
    _install(session, ".[binary]")
    session.run("python", "packaging/pyinstaller/build.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Bounded load: direct to nginx vs a do-nothing Quart proxy vs routerctl (needs wrk, nginx)."""
    _install(session, ".[test]")
    session.run("python", "bench/run.py", *(session.posargs or ["--duration", "5"]))


def _install(session: nox.Session, spec: str) -> None:
    # Each session gets its own venv from the interpreter running nox, so `pip install nox`
    # and one nox command are all a fresh machine needs.
    session.install("-q", "-e", spec)
