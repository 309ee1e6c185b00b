"""`scorer import`: real exports made here by the real converters from the bundled sessions.

Three foreign models, each trained in a second or two on one half of the bundled sessions:

- ``skl``: a scikit-learn Pipeline (OneHotEncoder over the two string columns, StandardScaler,
  GradientBoosting) through skl2onnx with its defaults: one input per column, strings
  included, and a ZipMap output;
- ``lgbm``: LightGBM through onnxmltools (`zipmap=False`): one float matrix [N, 14], a [N, 2]
  probability output;
- ``net``: a small network shaped like a PyTorch export (one float matrix [batch, F], one
  logit [batch, 1]), its weights from scikit-learn's MLPClassifier, written with onnx.helper
  (torch itself is a 700 MB install for one Gemm, Relu, Gemm graph).

For each: import through the CLI, score through the CLI, `intent_raw` equal to onnxruntime on
the original file, drift written, `calibrate` keeping `intent_raw` bit-identical, `evaluate`.
Then every bad input `scorer import` refuses, each with exit 2, a message naming the thing,
and nothing written under --out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from scorer.cli import cli
from scorer.model.interface import session_options
from scorer.model.runtime import load_model
from scorer.model.sessions import CODES, MEASURES, load_bundled_sessions

NUMERIC = MEASURES
LGBM_FEATURES = (*MEASURES, *CODES)
SKL_STRINGS = ("month", "visitor_type")
SKL_NUMBERS = ("page_value", "exit_rate", "product_seconds", "bounce_rate")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Bundled sessions, shuffled and cut: fit (foreign training), labelled, and to score."""
    root = tmp_path_factory.mktemp("import-data")
    table = load_bundled_sessions()
    order = np.random.default_rng(0).permutation(table.num_rows)
    fit, labelled, scored = order[:5000], order[5000:9000], order[9000:11000]
    paths = {
        "labelled": root / "labelled.parquet",
        "input": root / "input.parquet",
        "labels": root / "labels.parquet",
    }
    pq.write_table(table.take(labelled), paths["labelled"])
    pq.write_table(table.take(scored).drop_columns(["converted"]), paths["input"])
    pq.write_table(table.take(scored).select(["session_id", "converted"]), paths["labels"])
    return {"root": root, "fit": table.take(fit), **paths}


def _matrix(table: pa.Table, columns) -> np.ndarray:
    return np.column_stack([table[c].to_numpy().astype(np.float32) for c in columns])


def _skl(fit: pa.Table, path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = fit.select([*SKL_STRINGS, *SKL_NUMBERS]).to_pandas()
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("strings", OneHotEncoder(handle_unknown="ignore"), list(SKL_STRINGS)),
                        ("numbers", StandardScaler(), list(SKL_NUMBERS)),
                    ]
                ),
            ),
            ("model", GradientBoostingClassifier(n_estimators=20, random_state=0)),
        ]
    ).fit(frame, fit["converted"].to_numpy().astype(int))
    types = [(c, StringTensorType([None, 1])) for c in SKL_STRINGS]
    types += [(c, FloatTensorType([None, 1])) for c in SKL_NUMBERS]
    onnx.save(to_onnx(pipeline, initial_types=types), path)


def _lgbm(fit: pa.Table, path: Path) -> None:
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, random_state=0)
    model.fit(_matrix(fit, LGBM_FEATURES), fit["converted"].to_numpy().astype(int))
    exported = convert_lightgbm(
        model, initial_types=[("input", FloatTensorType([None, len(LGBM_FEATURES)]))], zipmap=False
    )
    onnx.save(exported, path)


def _net(fit: pa.Table, path: Path, **overrides) -> None:
    """log1p, standardise, Gemm, Relu, Gemm -> one logit per row, as torch.onnx.export writes
    a small MLP (input [batch, F], output [batch, 1], a symbolic batch dimension)."""
    from sklearn.neural_network import MLPClassifier

    x = np.log1p(_matrix(fit, NUMERIC).astype(np.float64))
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0)
    mlp.fit((x - mean) / std, fit["converted"].to_numpy().astype(int))
    constants = {
        "one": np.array(1.0, np.float32),
        "mean": mean.astype(np.float32),
        "std": std.astype(np.float32),
        "w1": mlp.coefs_[0].T.astype(np.float32),
        "b1": mlp.intercepts_[0].astype(np.float32),
        # Weights tripled: an overconfident network, as unregularised ones are.
        "w2": 3 * mlp.coefs_[1].T.astype(np.float32),
        "b2": 3 * mlp.intercepts_[1].astype(np.float32),
    }
    nodes = [
        helper.make_node("Add", ["input", "one"], ["plus_one"], name="/Add"),
        helper.make_node("Log", ["plus_one"], ["log1p"], name="/Log"),
        helper.make_node("Sub", ["log1p", "mean"], ["centred"], name="/Sub"),
        helper.make_node("Div", ["centred", "std"], ["scaled"], name="/Div"),
        helper.make_node("Gemm", ["scaled", "w1", "b1"], ["hidden"], name="/fc1/Gemm", transB=1),
        helper.make_node("Relu", ["hidden"], ["relu"], name="/Relu"),
        helper.make_node("Gemm", ["relu", "w2", "b2"], ["logit"], name="/fc2/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", len(NUMERIC)])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    model = helper.make_model(
        graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)]
    )
    model.producer_version = "2.15.0"
    onnx.save(model, path, **overrides)


MODELS = {
    "skl": (_skl, []),
    "lgbm": (_lgbm, ["--features", ",".join(LGBM_FEATURES)]),
    "net": (_net, ["--features", ",".join(NUMERIC), "--output-kind", "logit"]),
}


@pytest.fixture(scope="module")
def exports(data):
    paths = {}
    for name, (export, _) in MODELS.items():
        paths[name] = data["root"] / f"{name}.onnx"
        export(data["fit"], paths[name])
    return paths


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def imported(data, exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    dirs = {}
    for name, (_, flags) in MODELS.items():
        dirs[name] = root / name
        result = _run(
            "import", exports[name], "--data", data["labelled"], "--out", dirs[name], *flags
        )
        assert result.exit_code == 0, result.output
        assert "auto calibration, 5-fold out-of-fold log loss" in result.output
    return dirs


def _original(path: Path, table: pa.Table, name: str) -> np.ndarray:
    """The positive-class score onnxruntime gives for the original file, fed as its users would,
    with the scorer's session options: one intra-op thread. (With more, a tree ensemble sums its
    trees in another order, and its scores may differ from run to run by an ulp.)"""
    session = onnxruntime.InferenceSession(
        str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    if name == "skl":
        feed = {
            c: table[c].to_numpy(zero_copy_only=False).astype(object).reshape(-1, 1)
            for c in SKL_STRINGS
        }
        feed |= {c: _matrix(table, [c]) for c in SKL_NUMBERS}
        return np.array(
            [row[1] for row in session.run(["output_probability"], feed)[0]], np.float32
        )
    if name == "lgbm":
        return session.run(["probabilities"], {"input": _matrix(table, LGBM_FEATURES)})[0][:, 1]
    (logit,) = session.run(["logit"], {"input": _matrix(table, NUMERIC)})
    return logit.reshape(-1)


@pytest.mark.parametrize("name", list(MODELS))
def test_imported_model_scores_like_the_original(name, data, exports, imported, tmp_path):
    card = json.loads((imported[name] / "model.json").read_text())
    search = card["imported"]["calibration_search"]
    assert set(search["log_loss"]) == {"isotonic", "platt", "temperature", "none"}
    assert search["chosen"] == min(search["log_loss"], key=search["log_loss"].get)
    assert card["calibration"]["method"] == search["chosen"]
    assert card["imported"]["source_sha256"] and card["imported"]["producer_name"]

    out = tmp_path / "scored"
    result = _run(
        "score", data["input"], out, "--model", imported[name], "--processes", "0", "--threads", "1"
    )
    assert result.exit_code in (0, 3), result.output  # 3: an alert on a small sample, fine here
    scores = pq.read_table(out / "scores").sort_by("session_id")
    table = pq.read_table(data["input"]).sort_by("session_id")
    assert scores.num_rows == table.num_rows
    assert set(scores["status"].to_pylist()) == {"ok"}
    raw = scores["intent_raw"].to_numpy()
    original = _original(exports[name], table, name)
    if name == "net":  # a logit: intent_raw is its sigmoid, computed by onnxruntime in float32
        original = (1 / (1 + np.exp(-original.astype(np.float64)))).astype(np.float32)
        assert np.max(np.abs(raw - original)) < 1e-6
    else:
        assert np.array_equal(raw, original), np.max(np.abs(raw - original))
    assert list((out / "drift").rglob("*.parquet"))

    # calibrate refits the stage only: intent_raw bit-identical, the foreign graph untouched
    recalibrated = tmp_path / "recalibrated"
    method = "platt" if card["calibration"]["method"] != "platt" else "isotonic"
    result = _run(
        "calibrate",
        data["labelled"],
        "--model",
        imported[name],
        "--out",
        recalibrated,
        "--method",
        method,
    )
    assert result.exit_code == 0, result.output
    before, after = load_model(imported[name]), load_model(recalibrated)
    assert after.card.calibration.method == method and after.card.imported is not None
    rescored = after.score(table)
    assert np.array_equal(
        rescored["intent_raw"].to_numpy(), before.score(table)["intent_raw"].to_numpy()
    )

    result = _run("evaluate", out, data["labels"])
    assert result.exit_code in (0, 3), result.output
    assert list((out / "calibration").rglob("*.parquet"))
    assert _run("inspect", imported[name]).exit_code == 0


@pytest.mark.usefixtures("ray_cluster")
def test_imported_model_on_actors_and_worker_processes_to_delta(data, imported, tmp_path):
    from scorer.pipeline.entry import score

    expected = load_model(imported["lgbm"]).score(pq.read_table(data["input"]))["intent_raw"]
    runs = {
        "actors": {"actors": 1, "format": "delta"},
        "processes": {"processes": 1, "batch_rows": 500, "shard_rows": 500},
    }
    for label, options in runs.items():
        out = tmp_path / label
        summary = score(str(data["input"]), str(out), model=str(imported["lgbm"]), **options)
        assert summary.exit_code in (0, 3), label
        scores = pq.read_table(out / "scores")
        assert scores.num_rows == len(expected), label
        assert sorted(scores["intent_raw"].to_pylist()) == sorted(expected.to_pylist()), label


def _graph(outputs, nodes, domain_ops=()):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], outputs),
        opset_imports=[helper.make_opsetid("", 21), *domain_ops],
    )
    return model


def _two_candidates(path: Path) -> None:
    nodes = [
        helper.make_node("Softmax", ["input"], ["a"]),
        helper.make_node("Softmax", ["input"], ["b"]),
    ]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 2]) for n in "ab"]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], outputs), opset_imports=[helper.make_opsetid("", 21)]
    )
    onnx.save(model, path)


def _no_probability(path: Path) -> None:
    nodes = [helper.make_node("ArgMax", ["input"], ["label"], axis=1)]
    onnx.save(
        _graph([helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1])], nodes), path
    )


def _multiclass(path: Path) -> None:
    nodes = [helper.make_node("Softmax", ["input"], ["probabilities"])]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])]
    onnx.save(_graph(outputs, nodes), path)


def _foreign_domain(path: Path) -> None:
    nodes = [helper.make_node("Magic", ["input"], ["probabilities"], domain="com.example")]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])]
    onnx.save(_graph(outputs, nodes, [helper.make_opsetid("com.example", 1)]), path)


def _external(fit: pa.Table, path: Path) -> None:
    _net(fit, path, save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)


BAD = {
    "no probability-like output": (_no_probability, [], "no output looks like a probability"),
    "two candidates": (_two_candidates, [], "'a', 'b' could each be the score"),
    "multi-class": (_multiclass, [], "'probabilities' has shape [N, 3]: a multi-class model"),
    "features count": (
        "lgbm",
        ["--features", "admin_pages,browser"],
        "names 2 columns, but input 'input'",
    ),
    "input without a column": ("skl", ["--input", "month=moon"], "needs a column 'moon'"),
    "string input over numbers": (
        "skl",
        ["--input", "month=page_value"],
        "input 'month' takes strings, but column 'page_value'",
    ),
    "single float without a kind": (
        "net",
        ["--features", ",".join(NUMERIC)],
        "say whether it is a probability or a logit",
    ),
    "external data": (_external, [], "keeps its data in an external file"),
    "operator domain": (_foreign_domain, [], "domain 'com.example'"),
    "one class": ("lgbm", ["--features", ",".join(LGBM_FEATURES)], "one class only"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_naming_it_and_writes_nothing(case, data, exports, tmp_path):
    make, flags, message = BAD[case]
    labelled = data["labelled"]
    if isinstance(make, str):
        path = exports[make]
    else:
        path = tmp_path / "bad.onnx"
        make(data["fit"], path) if make is _external else make(path)
    if case == "one class":
        labelled = tmp_path / "one-class.parquet"
        table = pq.read_table(data["labelled"])
        pq.write_table(table.filter(pc.invert(table["converted"])), labelled)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["import", str(path), "--data", str(labelled), "--out", str(out), *flags]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_model_table_of_the_config_sets_the_directory_and_threads(tmp_path):
    from scorer.config import load_config
    from scorer.errors import ConfigError

    path = tmp_path / "job.toml"
    path.write_text('[model]\ndir = "models/lgbm"\nthreads = 2\n')
    config = load_config(path)
    assert (config.model, config.threads_per_actor) == ("models/lgbm", 2)
    path.write_text("[model]\nthreads = 0\n")
    with pytest.raises(ConfigError, match="threads_per_actor: must be at least 1"):
        load_config(path)
    path.write_text("[model]\ncores = 2\n")
    with pytest.raises(ConfigError, match=r"job.toml: unknown key 'model.cores'"):
        load_config(path)
