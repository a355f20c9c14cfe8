"""`python -m rscore_cli` is `rscore`."""

from rscore_cli.main import cli

cli()
