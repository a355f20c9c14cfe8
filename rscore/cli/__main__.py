"""`python -m rscore.cli` is `rscore`."""

from rscore.cli.main import cli

cli()
