"""`python -m rscore.r_scorer --bundle B --socket-dir D [--workers N]`: the pod's r-scorer."""

from rscore.cli.main import scorer_main

scorer_main()
