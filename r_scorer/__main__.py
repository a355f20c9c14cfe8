"""`python -m r_scorer --bundle B --socket-dir D [--workers N]`: the pod's r-scorer."""

from rscore_cli.main import scorer_main

scorer_main()
