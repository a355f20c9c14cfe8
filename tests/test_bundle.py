"""bundle.read_bundle / spec_from_config on real folders (no R: model.rds is a placeholder)."""

import pytest

from rscore.r_scorer.bundle import (
    CONFIG_FILE,
    MODEL_FILE,
    SCRIPT_FILE,
    BundleSpec,
    read_bundle,
    spec_from_config,
)
from rscore.r_scorer.errors import BundleError


def make_bundle(tmp_path, name="iris-glm", toml=None, model=True, script=False):
    folder = tmp_path / name
    folder.mkdir()
    if model:
        (folder / MODEL_FILE).write_bytes(b"")
    if script:
        (folder / SCRIPT_FILE).write_text("score <- function(state, data) 1\n")
    if toml is not None:
        (folder / CONFIG_FILE).write_text(toml, encoding="utf-8")
    return folder


def test_file_names():
    assert (MODEL_FILE, SCRIPT_FILE, CONFIG_FILE) == ("model.rds", "score.R", "rscore.toml")


def test_defaults_without_rscore_toml(tmp_path):
    folder = make_bundle(tmp_path, "iris-glm")
    spec = read_bundle(folder)
    assert spec == BundleSpec(
        path=folder.resolve(),
        name="iris-glm",
        version="",
        packages=(),
        predict_args={},
        batchable=True,
    )


@pytest.mark.parametrize(
    ("model", "script"),
    [(True, False), (False, True), (True, True)],
    ids=["model-only", "script-only", "both"],
)
def test_either_model_or_script_is_enough(tmp_path, model, script):
    spec = read_bundle(make_bundle(tmp_path, "b1", model=model, script=script))
    assert spec.name == "b1"


def test_accepts_str_path_and_resolves_it(tmp_path, monkeypatch):
    make_bundle(tmp_path, "m")
    monkeypatch.chdir(tmp_path)
    spec = read_bundle("m")
    assert spec.path == (tmp_path / "m").resolve()
    assert spec.path.is_absolute()


def test_name_comes_from_the_resolved_folder(tmp_path, monkeypatch):
    folder = make_bundle(tmp_path, "from-folder")
    monkeypatch.chdir(folder)
    assert read_bundle(".").name == "from-folder"


def test_empty_rscore_toml_gives_defaults(tmp_path):
    spec = read_bundle(make_bundle(tmp_path, "m", toml=""))
    assert (spec.name, spec.version, spec.packages, spec.predict_args, spec.batchable) == (
        "m",
        "",
        (),
        {},
        True,
    )


def test_every_rscore_toml_field(tmp_path):
    toml = """
name = "cars.v2_final"
version = "2.1.0"
packages = ["randomForest", "stats"]

[predict]
type = "response"
"n.trees" = 100
"se.fit" = false
level = 0.95
quantiles = [0.1, 0.5, 0.9]
ints_and_floats = [1, 2.5]
labels = ["a", "b"]
flags = [true, false]

[serving]
batchable = false
"""
    folder = make_bundle(tmp_path, "ignored-folder-name", toml=toml)
    spec = read_bundle(folder)
    assert spec == BundleSpec(
        path=folder.resolve(),
        name="cars.v2_final",
        version="2.1.0",
        packages=("randomForest", "stats"),
        predict_args={
            "type": "response",
            "n.trees": 100,
            "se.fit": False,
            "level": 0.95,
            "quantiles": [0.1, 0.5, 0.9],
            "ints_and_floats": [1, 2.5],
            "labels": ["a", "b"],
            "flags": [True, False],
        },
        batchable=False,
        splittable=False,  # follows batchable unless set
    )


@pytest.mark.parametrize(
    ("serving", "batchable", "splittable"),
    [
        ("", True, True),
        ("batchable = false", False, False),
        ("splittable = false", True, False),
        ("batchable = false\nsplittable = true", False, True),
    ],
    ids=["defaults", "not-batchable-not-split", "batchable-not-split", "split-not-batched"],
)
def test_splittable_defaults_to_batchable(tmp_path, serving, batchable, splittable):
    spec = read_bundle(make_bundle(tmp_path, "m", toml=f"[serving]\n{serving}"))
    assert (spec.batchable, spec.splittable) == (batchable, splittable)


def test_splittable_must_be_a_boolean(tmp_path):
    folder = make_bundle(tmp_path, "m", toml='[serving]\nsplittable = "no"')
    with pytest.raises(BundleError, match=r"\[serving\] splittable must be true or false"):
        read_bundle(folder)


@pytest.mark.parametrize(
    ("line", "version"),
    [
        ('version = "1.0"', "1.0"),
        ("version = 3", "3"),
        ("version = 1.5", "1.5"),
        ('version = ""', ""),
    ],
    ids=["string", "integer", "float", "empty"],
)
def test_version_becomes_a_string(tmp_path, line, version):
    assert read_bundle(make_bundle(tmp_path, "m", toml=line)).version == version


@pytest.mark.parametrize(
    "name",
    ["a", "0", "A.b_c-d", "x" * 63, "model-2024.01", "9lives"],
    ids=["one-letter", "one-digit", "punctuation", "63-chars", "dated", "digit-first"],
)
def test_valid_names(tmp_path, name):
    assert read_bundle(make_bundle(tmp_path, "m", toml=f'name = "{name}"')).name == name


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"serving": {}},
        {"predict": {}},
        {"packages": []},
    ],
    ids=["empty", "empty-serving", "empty-predict", "empty-packages"],
)
def test_spec_from_config_defaults(tmp_path, config):
    spec = spec_from_config(tmp_path / "glm", config)
    assert spec == BundleSpec(path=tmp_path / "glm", name="glm")
    assert spec.batchable is True


def test_spec_from_config_copies_predict_args(tmp_path):
    predict = {"type": "prob"}
    spec = spec_from_config(tmp_path, {"name": "m", "predict": predict})
    predict["type"] = "class"
    assert spec.predict_args == {"type": "prob"}


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BundleError) as caught:
        read_bundle(missing)
    assert caught.value.message == f"bundle {str(missing)!r} is not a folder"
    assert caught.value.code == "bundle_error"


def test_a_file_is_not_a_folder(tmp_path):
    path = tmp_path / "model.rds"
    path.write_bytes(b"")
    with pytest.raises(BundleError, match="is not a folder"):
        read_bundle(path)


@pytest.mark.parametrize(
    "files",
    [[], [CONFIG_FILE], ["ptype.rds"], ["model.R", "score.rds"]],
    ids=["empty-folder", "config-only", "ptype-only", "similar-names"],
)
def test_neither_model_nor_script(tmp_path, files):
    folder = tmp_path / "empty"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("")
    with pytest.raises(BundleError) as caught:
        read_bundle(folder)
    message = caught.value.message
    assert str(folder) in message
    assert "has neither model.rds nor score.R" in message
    assert "saveRDS(fit, 'model.rds')" in message


def test_model_rds_that_is_a_folder_does_not_count(tmp_path):
    folder = tmp_path / "m"
    (folder / MODEL_FILE).mkdir(parents=True)
    with pytest.raises(BundleError, match=r"has neither model\.rds nor score\.R"):
        read_bundle(folder)


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('name = "x', ["rscore.toml: "]),
        ("name = ", ["rscore.toml: "]),
        ("[serving\nbatchable = true", ["rscore.toml: "]),
        ('name = "a"\nname = "b"', ["rscore.toml: "]),
        ("flavour = 1", ["rscore.toml: unknown key(s) ['flavour']", "known: ["]),
        ("Name = 'x'\nmodel = 1", ["rscore.toml: unknown key(s) ['Name', 'model']"]),
        ('name = ""', ["rscore.toml: name ''", "is not a model name"]),
        ('name = "my model"', ["rscore.toml: name 'my model' is not a model name"]),
        ('name = "-lead"', ["rscore.toml: name '-lead' is not a model name"]),
        ('name = ".hidden"', ["rscore.toml: name '.hidden' is not a model name"]),
        ('name = "a/b"', ["rscore.toml: name 'a/b' is not a model name"]),
        (f'name = "{"x" * 64}"', ["rscore.toml: name 'xxx", "is not a model name"]),
        ("name = 7", ["rscore.toml: name 7 is not a model name"]),
        ("name = ['a']", ["rscore.toml: name ['a'] is not a model name"]),
        ("version = true", ["rscore.toml: version must be a string"]),
        ("version = [1]", ["rscore.toml: version must be a string"]),
        ("version = 2024-01-01", ["rscore.toml: version must be a string"]),
        ('packages = "randomForest"', ["rscore.toml: packages must be a list of R package names"]),
        ("packages = [1]", ["rscore.toml: packages must be a list"]),
        ('packages = ["gbm", ""]', ["rscore.toml: packages must be a list"]),
        ("[packages]\ngbm = true", ["rscore.toml: packages must be a list"]),
        ('predict = "response"', ["rscore.toml: [predict] must be a table"]),
        (
            "[predict]\nobject = 1",
            ["rscore.toml: [predict] must not set 'object'; rscore passes it"],
        ),
        ('[predict]\nnewdata = "x"', ["rscore.toml: [predict] must not set 'newdata'"]),
        ("[predict]\nv = [1, 'a']", ["rscore.toml: [predict] 'v' must be a string, number"]),
        ("[predict]\nv = [true, 1]", ["[predict] 'v' must be a string, number, boolean"]),
        ("[predict]\nv = []", ["[predict] 'v' must be", "non-empty list"]),
        ("[predict]\nv = [[1, 2]]", ["[predict] 'v' must be a string, number"]),
        ("[predict.v]\nk = 1", ["rscore.toml: [predict] 'v' must be a string, number"]),
        ("[predict]\nn.trees = 100", ["rscore.toml: [predict] 'n' must be a string, number"]),
        ("[predict]\nv = {k = 1}", ["[predict] 'v' must be a string, number"]),
        ("[predict]\nwhen = 2024-01-01", ["[predict] 'when' must be a string, number"]),
        ("serving = true", ["rscore.toml: [serving] must be a table"]),
        ("[serving]\nworkers = 2", ["rscore.toml: unknown key(s) in [serving]: ['workers']"]),
        (
            '[serving]\nbatchable = "yes"',
            ["rscore.toml: [serving] batchable must be true or false"],
        ),
        ("[serving]\nbatchable = 1", ["rscore.toml: [serving] batchable must be true or false"]),
    ],
    ids=[
        "toml-unterminated-string",
        "toml-missing-value",
        "toml-unclosed-table",
        "toml-duplicate-key",
        "unknown-key",
        "unknown-keys-sorted",
        "name-empty",
        "name-space",
        "name-leading-dash",
        "name-leading-dot",
        "name-slash",
        "name-64-chars",
        "name-number",
        "name-list",
        "version-bool",
        "version-list",
        "version-date",
        "packages-string",
        "packages-numbers",
        "packages-empty-name",
        "packages-table",
        "predict-not-table",
        "predict-object",
        "predict-newdata",
        "predict-mixed-list",
        "predict-bool-and-number-list",
        "predict-empty-list",
        "predict-nested-list",
        "predict-nested-table",
        "predict-bare-dotted-key",
        "predict-inline-table",
        "predict-date",
        "serving-not-table",
        "serving-unknown-key",
        "batchable-string",
        "batchable-integer",
    ],
)
def test_invalid_rscore_toml(tmp_path, toml, fragments):
    folder = make_bundle(tmp_path, "m", toml=toml)
    with pytest.raises(BundleError) as caught:
        read_bundle(folder)
    assert caught.value.code == "bundle_error"
    for fragment in fragments:
        assert fragment in caught.value.message


def test_toml_syntax_error_does_not_chain(tmp_path):
    with pytest.raises(BundleError) as caught:
        read_bundle(make_bundle(tmp_path, "m", toml="= 1"))
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


def test_rscore_toml_not_utf8(tmp_path):
    folder = make_bundle(tmp_path, "m")
    (folder / CONFIG_FILE).write_bytes(b'name = "\xff"\n')
    with pytest.raises(BundleError, match=r"^rscore\.toml: "):
        read_bundle(folder)


def test_invalid_folder_name_without_rscore_toml(tmp_path):
    folder = make_bundle(tmp_path, "my model")
    with pytest.raises(
        BundleError, match="the bundle folder's name 'my model' is not a model name"
    ):
        read_bundle(folder)


def test_rscore_toml_name_overrides_an_invalid_folder_name(tmp_path):
    folder = make_bundle(tmp_path, "my model", toml='name = "my-model"')
    assert read_bundle(folder).name == "my-model"


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"predict": {"v": None}}, "[predict] 'v' must be"),
        ({"predict": {"v": [1, None]}}, "[predict] 'v' must be"),
        ({"predict": {"v": (1, 2)}}, "[predict] 'v' must be"),
        ({"packages": ("stats",)}, "packages must be a list"),
        ({"serving": {"batchable": None}}, "[serving] batchable must be true or false"),
        ({"name": None}, "name None is not a model name"),
    ],
    ids=["none", "list-with-none", "tuple", "packages-tuple", "batchable-none", "name-none"],
)
def test_spec_from_config_rejects_non_toml_values(tmp_path, config, fragment):
    with pytest.raises(BundleError) as caught:
        spec_from_config(tmp_path / "m", config)
    assert caught.value.message.startswith("rscore.toml: ")
    assert fragment in caught.value.message


def test_name_with_trailing_newline_is_rejected(tmp_path):
    folder = make_bundle(tmp_path, "m", toml='name = "model\\n"')
    with pytest.raises(BundleError, match="is not a model name"):
        read_bundle(folder)
