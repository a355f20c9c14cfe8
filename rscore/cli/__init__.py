"""The `rscore` command line: one group, one subcommand per job, each a thin shell."""
