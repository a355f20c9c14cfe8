"""What a model bundle folder declares: its files and `rscore.toml`, as plain data.

A bundle is `model.rds` and/or `score.R`, optionally `ptype.rds` and `rscore.toml`
(`name`, `version`, `packages`, `[predict]` arguments, `[serving] batchable` and
`splittable`). This
module reads the folder and the TOML only; loading into R is `rmodel`'s job.

Pure apart from reading the folder; never starts R. Errors name the file at fault.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rscore.r_scorer.errors import BundleError

MODEL_FILE = "model.rds"
SCRIPT_FILE = "score.R"
PTYPE_FILE = "ptype.rds"
CONFIG_FILE = "rscore.toml"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # safe in a URL path and a k8s label
_TOP_KEYS = {"name", "version", "packages", "predict", "serving"}
_SERVING_KEYS = {"batchable", "splittable"}

PredictArgument = str | int | float | bool | list[Any]


@dataclass(frozen=True)
class BundleSpec:
    """A bundle as declared on disk."""

    path: Path
    name: str
    version: str = ""
    packages: tuple[str, ...] = ()
    predict_args: dict[str, PredictArgument] = field(default_factory=dict)
    batchable: bool = True
    # Rows may be scored in separate calls and joined (a large request over idle workers).
    splittable: bool = True


def read_bundle(path: str | Path) -> BundleSpec:
    """Read a bundle folder's declaration; check it is a bundle at all."""
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise BundleError(f"bundle {str(path)!r} is not a folder")
    if not (folder / MODEL_FILE).is_file() and not (folder / SCRIPT_FILE).is_file():
        raise BundleError(
            f"bundle {str(path)!r} has neither {MODEL_FILE} nor {SCRIPT_FILE} "
            f"(save the model with saveRDS(fit, '{MODEL_FILE}'))"
        )
    config = _read_config(folder / CONFIG_FILE)
    return spec_from_config(folder, config)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{CONFIG_FILE}: {exc}") from None


def spec_from_config(folder: Path, config: dict[str, Any]) -> BundleSpec:
    """Validate a parsed `rscore.toml` (empty when absent) into a BundleSpec."""
    unknown = sorted(set(config) - _TOP_KEYS)
    if unknown:
        raise BundleError(f"{CONFIG_FILE}: unknown key(s) {unknown}; known: {sorted(_TOP_KEYS)}")
    name = config.get("name", folder.name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        where = f"{CONFIG_FILE}: name" if "name" in config else "the bundle folder's name"
        raise BundleError(
            f"{where} {name!r} is not a model name: use 1-63 letters, digits, '.', '_' or "
            f"'-', starting with a letter or digit"
            + ("" if "name" in config else f" (or set name in {CONFIG_FILE})")
        )
    version = config.get("version", "")
    if not isinstance(version, str | int | float) or isinstance(version, bool):
        raise BundleError(f"{CONFIG_FILE}: version must be a string")
    packages = config.get("packages", [])
    if not isinstance(packages, list) or not all(isinstance(p, str) and p for p in packages):
        raise BundleError(f"{CONFIG_FILE}: packages must be a list of R package names")
    predict_args = config.get("predict", {})
    if not isinstance(predict_args, dict):
        raise BundleError(f"{CONFIG_FILE}: [predict] must be a table of predict() arguments")
    for key, value in predict_args.items():
        _check_predict_argument(key, value)
    serving = config.get("serving", {})
    if not isinstance(serving, dict):
        raise BundleError(f"{CONFIG_FILE}: [serving] must be a table")
    unknown = sorted(set(serving) - _SERVING_KEYS)
    if unknown:
        raise BundleError(f"{CONFIG_FILE}: unknown key(s) in [serving]: {unknown}")
    batchable = serving.get("batchable", True)
    if not isinstance(batchable, bool):
        raise BundleError(f"{CONFIG_FILE}: [serving] batchable must be true or false")
    # Splitting a request is batching undone: the same promise that rows are scored
    # independently, so by default exactly when batchable.
    splittable = serving.get("splittable", batchable)
    if not isinstance(splittable, bool):
        raise BundleError(f"{CONFIG_FILE}: [serving] splittable must be true or false")
    return BundleSpec(
        path=folder,
        name=name,
        version=str(version),
        packages=tuple(packages),
        predict_args=dict(predict_args),
        batchable=batchable,
        splittable=splittable,
    )


def _check_predict_argument(key: str, value: Any) -> None:
    if key in ("object", "newdata"):
        raise BundleError(f"{CONFIG_FILE}: [predict] must not set '{key}'; rscore passes it")
    items = value if isinstance(value, list) else [value]
    kinds = {_scalar_kind(item) for item in items}
    if items and len(kinds) == 1 and None not in kinds:
        return
    raise BundleError(
        f"{CONFIG_FILE}: [predict] {key!r} must be a string, number, boolean "
        f"or a non-empty list of one of those"
    )


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "logical"
    if isinstance(value, int | float):
        return "numeric"
    if isinstance(value, str):
        return "character"
    return None
