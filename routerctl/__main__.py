"""`python -m routerctl` runs the CLI."""

from routerctl.main import run

run()
