"""Score a request body in this process: `rscore predict` without workers or sockets.

The same path a worker takes (bundle -> R model, body -> frame -> prototype -> R), in
one embedded R. For offline use and for checking a bundle before serving it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rscore.r_scorer.bundle import read_bundle
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.protocol import prediction_list
from rscore.r_scorer.prototype import coerce


def predict_offline(bundle: str | Path, body: bytes) -> list[Any]:
    """Load the bundle and score the body (any of the three formats)."""
    from rscore.r_scorer.rmodel import load_model  # starts R

    model = load_model(read_bundle(bundle))
    frame = coerce(parse_body(body, model.prototype.known), model.prototype)
    return prediction_list(model.score(frame).predictions)
