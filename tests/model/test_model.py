"""The model at run time: card, checksum, loading, and `IntentModel.score` against scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from scorer.cli import cli
from scorer.errors import ChecksumError, ConfigError, ModelError, ShardReadError
from scorer.model.calibration import reference_predict
from scorer.model.card import CALIBRATION_METHODS, CARD_FILE, GRAPH_FILE, load_card, save_card
from scorer.model.runtime import RESERVED_COLUMNS, default_model_dir, load_model
from scorer.model.sessions import LABEL_COLUMN, load_bundled_sessions
from scorer.model.train import fit, labels_of, session_inputs, train

# Our method name -> CalibratedClassifierCV's.
SKLEARN_METHODS = {"platt": "sigmoid", "temperature": "temperature", "isotonic": "isotonic"}
METHODS = CALIBRATION_METHODS
assert set(METHODS) == {"none", *SKLEARN_METHODS}


@pytest.fixture(scope="module")
def sessions() -> pa.Table:
    return load_bundled_sessions()


@pytest.fixture(scope="module")
def labels(sessions) -> np.ndarray:
    return labels_of(sessions, session_inputs({}), LABEL_COLUMN, "bundled")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sessions, labels):
    """Per method: the written model directory and the scikit-learn objects it must reproduce."""
    models = {}
    for method in METHODS:
        directory = tmp_path_factory.mktemp(method)
        train(sessions, directory, calibration=method)
        fitted = fit(sessions, labels, calibration=method, seed=0)
        models[method] = (directory, fitted)
    return models


def adversarial_rows(sessions: pa.Table) -> pa.Table:
    """Rows at the edges: zeros, bounds, huge values, unseen categories, each field pushed alone."""
    base = sessions.slice(0, 1).to_pylist()[0]
    edits = [
        {},
        {name: 0 for name in ("admin_pages", "info_pages", "product_pages")}
        | {
            name: 0.0 for name in ("admin_seconds", "info_seconds", "product_seconds", "page_value")
        },
        {"bounce_rate": 0.0, "exit_rate": 0.0, "special_day": 0.0},
        {"bounce_rate": 1.0, "exit_rate": 1.0, "special_day": 1.0},
        {"product_pages": 2**31 - 1, "product_seconds": 1e12, "page_value": 1e9},
        {"page_value": 1e6, "exit_rate": 0.0, "month": "Nov", "visitor_type": "New_Visitor"},
        {"page_value": 1e-300, "admin_seconds": 5e-324},
        {"month": "Jan", "browser": 9999, "operating_system": -7, "region": 0, "traffic_type": 99},
        {"month": "Apr", "visitor_type": "Bot"},
        {"weekend": True, "month": "Feb"},
    ]
    rows = [base | edit | {"session_id": -i} for i, edit in enumerate(edits)]
    return pa.Table.from_pylist(rows, schema=sessions.schema)


def sklearn_calibrated(fitted, sessions, labels, method):
    rows = fitted.splits["calibration"]
    calibrated = CalibratedClassifierCV(
        FrozenEstimator(fitted.pipeline), method=SKLEARN_METHODS[method]
    )
    return calibrated.fit(sessions.take(rows), labels[rows])


# --- parity with scikit-learn -----------------------------------------------------------------


def scored_and_expected(trained, sessions, labels, method):
    """Scores of every real session plus the edge rows, and scikit-learn's raw and calibrated."""
    directory, fitted = trained[method]
    data = pa.concat_tables([sessions, adversarial_rows(sessions)])
    scores = load_model(directory).score(data)
    assert scores["status"].to_pylist() == ["ok"] * data.num_rows
    raw = fitted.pipeline.predict_proba(data)[:, 1]
    if method == "none":
        calibrated = raw
    else:
        calibrated = sklearn_calibrated(fitted, sessions, labels, method).predict_proba(data)[:, 1]
    return data, scores, raw, calibrated


@pytest.mark.parametrize("method", METHODS)
def test_scores_match_scikit_learn_on_all_real_sessions_and_edge_rows(
    trained, sessions, labels, method
):
    """intent_raw vs the scikit-learn pipeline; intent_calibrated vs scikit-learn's calibrator.

    The calibrator is checked on the logit the graph itself computes (float32, within ~1e-7 of
    scikit-learn's float64 one): that is what the calibration stage receives. End to end against
    CalibratedClassifierCV, see the next test.
    """
    data, scores, raw, _ = scored_and_expected(trained, sessions, labels, method)
    np.testing.assert_allclose(scores["intent_raw"].to_numpy(), raw, rtol=0, atol=1e-5)
    params = trained[method][1].calibrator
    graph_logit = _graph_logit(trained[method][0], data).astype(np.float64)
    expected = (
        reference_predict(params, graph_logit)
        if method != "none"
        else scores["intent_raw"].to_numpy()
    )
    np.testing.assert_allclose(scores["intent_calibrated"].to_numpy(), expected, rtol=0, atol=1e-5)


def _graph_logit(model_dir, data: pa.Table) -> np.ndarray:
    """The graph's own logit: the input of the Sigmoid that makes intent_raw, exposed as an output."""
    import onnx
    import onnxruntime

    from scorer.model.encode import encode

    graph = onnx.load(str(model_dir / GRAPH_FILE))
    producers = {out: node for node in graph.graph.node for out in node.output}
    reshape = producers["intent_raw"]
    sigmoid = producers[reshape.input[0]]
    graph.graph.output.append(onnx.ValueInfoProto(name=sigmoid.input[0]))
    session = onnxruntime.InferenceSession(
        graph.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    model = load_model(model_dir)
    feed = encode(model.card, data).feed
    return session.run([sigmoid.input[0]], feed)[0].reshape(-1)


@pytest.mark.parametrize("method", ["none", "platt", "temperature"])
def test_calibrated_matches_calibrated_classifier_cv_end_to_end(trained, sessions, labels, method):
    _, scores, _, calibrated = scored_and_expected(trained, sessions, labels, method)
    np.testing.assert_allclose(
        scores["intent_calibrated"].to_numpy(), calibrated, rtol=0, atol=1e-5
    )


def test_isotonic_matches_scikit_learn_up_to_the_conditioning_of_its_map(trained, sessions, labels):
    """End to end against CalibratedClassifierCV: within 1e-5 plus what a 1e-6 change of the logit
    moves the isotonic map by, row by row. The bundled model's map has a segment 1e-4 wide that
    rises 0.036: there the float32 rounding of the logit alone moves the output by up to 5e-5 (3
    of 12,340 rows). A float64 logit would remove it at ~1.5x the graph's cost (float64 Log)."""
    data, scores, raw, calibrated = scored_and_expected(trained, sessions, labels, "isotonic")
    np.testing.assert_allclose(scores["intent_raw"].to_numpy(), raw, rtol=0, atol=1e-5)
    params = trained["isotonic"][1].calibrator
    logit = trained["isotonic"][1].pipeline.decision_function(data)
    slopes = np.concatenate([[0.0], np.diff(params.y) / np.diff(params.x), [0.0]])
    segment = np.searchsorted(params.x, logit)  # slopes[segment] is the segment holding the logit
    steepest = np.max(
        [slopes[np.clip(segment + d, 0, len(slopes) - 1)] for d in (-1, 0, 1)], axis=0
    )
    error = np.abs(scores["intent_calibrated"].to_numpy() - calibrated)
    assert (error <= 1e-5 + steepest * 1e-6).all()
    assert (error > 1e-5).sum() <= 5


@pytest.mark.parametrize("method", METHODS)
def test_calibrated_is_monotone_in_raw(trained, sessions, method):
    model = load_model(trained[method][0])
    rows = sessions.num_rows

    @settings(max_examples=25, deadline=None)
    @given(
        st.lists(st.integers(0, rows - 1), min_size=2, max_size=200),
        st.floats(0, 5000),
        st.floats(0, 1),
    )
    def check(picks, page_value, exit_rate):
        # Real rows with two strong features overridden: covers the whole range of the logit.
        data = sessions.take(picks)
        data = data.set_column(
            data.schema.get_field_index("page_value"),
            "page_value",
            pa.array([page_value] * len(picks)),
        )
        data = data.set_column(
            data.schema.get_field_index("exit_rate"),
            "exit_rate",
            pa.array([exit_rate] * len(picks)),
        )
        data = pa.concat_tables([data, sessions.take(picks)])
        scores = model.score(data)
        raw = scores["intent_raw"].to_numpy()
        calibrated = scores["intent_calibrated"].to_numpy()
        order = np.lexsort((calibrated, raw))
        # Where raw strictly increases, calibrated must not decrease.
        raw, calibrated = raw[order], calibrated[order]
        rises = np.diff(raw) > 0
        assert (np.diff(calibrated)[rises] >= 0).all()
        assert ((calibrated >= 0) & (calibrated <= 1)).all()

    check()


# --- the scores table (docs/output.md) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_score_table_schema_order_and_nulls(model, sessions):
    data = sessions.slice(0, 6)
    data = data.set_column(
        data.schema.get_field_index("page_value"),
        "page_value",
        pa.array([1.0, None, 2.0, math.nan, 3.0, -1.0]),
    )
    scores = model.score(
        data, key_column="session_id", keep=["visitor_type", "session_id"], run_id="run-1"
    )
    dictionary = pa.dictionary(pa.int32(), pa.string())
    assert scores.schema.names == [
        "session_id",
        "visitor_type",
        "intent_raw",
        "intent_calibrated",
        "status",
        "model_version",
        "run_id",
    ]
    assert [f.type for f in scores.schema][2:] == [
        pa.float32(),
        pa.float32(),
        dictionary,
        dictionary,
        dictionary,
    ]
    assert scores["session_id"].to_pylist() == data["session_id"].to_pylist()
    assert scores["status"].to_pylist() == [
        "ok",
        "missing:page_value",
        "ok",
        "not_finite:page_value",
        "ok",
        "out_of_range:page_value",
    ]
    for column in ("intent_raw", "intent_calibrated"):
        assert [v is None for v in scores[column].to_pylist()] == [
            False,
            True,
            False,
            True,
            False,
            True,
        ]
    assert set(scores["model_version"].to_pylist()) == {model.card.version}
    assert set(scores["run_id"].to_pylist()) == {"run-1"}
    metadata = scores.schema.metadata
    assert metadata[b"scorer.model.sha256"] == model.card.sha256.encode()
    assert metadata[b"scorer.run_id"] == b"run-1"


def test_score_accepts_record_batches_and_empty_input_and_defaults(model, sessions):
    batch = sessions.slice(0, 5).to_batches()[0]
    table_scores = model.score(sessions.slice(0, 5))
    batch_scores = model.score(batch)
    assert batch_scores.equals(table_scores)
    assert batch_scores.schema.names == [
        "intent_raw",
        "intent_calibrated",
        "status",
        "model_version",
        "run_id",
    ]
    assert batch_scores["run_id"].null_count == 5
    assert model.score(sessions.slice(0, 0)).num_rows == 0


def test_batches_of_different_sizes_do_not_leak_into_each_other(model, sessions):
    whole = model.score(sessions)
    parts = [
        model.score(sessions.slice(start, size))
        for start, size in ((0, 5000), (5000, 17), (5017, 7313))
    ]
    assert pa.concat_tables(parts).equals(whole)


def test_large_tables_scored_block_by_block_match_one_block(model, sessions, monkeypatch):
    """Tables over 1.5 blocks are encoded and inferred block by block; everything a caller sees
    (scores, nulls, statuses, invalid and unseen counts) is what one block gives."""
    import scorer.model.runtime

    data = pa.concat_tables([sessions.slice(0, 2500), adversarial_rows(sessions)] * 3)
    broken = data.column("month").to_pylist()
    broken[10], broken[4000], broken[4001] = None, "Foo", None
    data = data.set_column(data.schema.get_field_index("month"), "month", pa.array(broken))
    whole = model.score_batch(data, key_column="session_id", run_id="r")
    monkeypatch.setattr(scorer.model.runtime, "_BLOCK_ROWS", 1000)  # 8 blocks, the last one short
    blocks = model.score_batch(data, key_column="session_id", run_id="r")
    assert blocks.table.equals(whole.table, check_metadata=True)
    assert blocks.invalid_counts == whole.invalid_counts == {"missing:month": 2}
    assert blocks.unseen == whole.unseen and blocks.rows_unseen == whole.rows_unseen > 0


def test_score_batch_reports_counts_and_timings(model, sessions):
    data = sessions.slice(0, 4)
    data = data.set_column(
        data.schema.get_field_index("month"), "month", pa.array(["Foo", None, "Nov", "Bar"])
    )
    scored = model.score_batch(data)
    assert scored.rows_invalid == 1
    assert scored.invalid_counts == {"missing:month": 1}
    assert scored.unseen["month"] == 2 and scored.rows_unseen == 2
    assert scored.encode_seconds >= 0 and scored.infer_seconds >= 0
    assert scored.raw.null_count == 1 and scored.calibrated.type == pa.float32()


def test_missing_key_and_reserved_names_are_refused(model, sessions):
    with pytest.raises(ShardReadError, match="'nope'"):
        model.score(sessions.slice(0, 1), key_column="nope")
    with pytest.raises(ConfigError, match="'status'"):
        model.score(sessions.slice(0, 1).append_column("status", pa.array(["x"])), keep=["status"])
    assert "intent_raw" in RESERVED_COLUMNS


def test_model_says_which_columns_it_reads(model):
    assert model.required_columns == tuple(spec.name for spec in model.card.inputs)
    assert model.categorical_string_columns == ["month", "visitor_type"]


# --- loading: card, checksum ------------------------------------------------------------------


def test_bundled_model_is_the_checkout_copy():
    directory = default_model_dir()
    assert directory.name == "intent-v1" and (directory / GRAPH_FILE).is_file()
    card = load_card(directory)
    assert card.key_column == "session_id" and card.label_column == "converted"
    assert card.calibration.method == "isotonic"


def test_card_round_trips(tmp_path):
    card = load_card(default_model_dir())
    save_card(card, tmp_path)
    assert load_card(tmp_path) == card


@pytest.fixture
def model_copy(tmp_path):
    for name in (GRAPH_FILE, CARD_FILE):
        (tmp_path / name).write_bytes((default_model_dir() / name).read_bytes())
    return tmp_path


def test_checksum_mismatch_is_refused(model_copy):
    graph = model_copy / GRAPH_FILE
    graph.write_bytes(graph.read_bytes() + b"\0")
    expected = load_card(model_copy).sha256
    with pytest.raises(ChecksumError) as caught:
        load_model(model_copy)
    message = str(caught.value)
    assert str(graph) in message and expected in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("key", ["sha256", "inputs", "calibration.method", "metrics.holdout.rows"])
def test_missing_card_key_is_named(model_copy, key):
    doc = json.loads((model_copy / CARD_FILE).read_text())
    *parents, last = key.split(".")
    target = doc
    for parent in parents:
        target = target[parent]
    del target[last]
    (model_copy / CARD_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelError) as caught:
        load_model(model_copy)
    assert repr(last) in str(caught.value) and CARD_FILE in str(caught.value)


def test_card_that_does_not_describe_the_graph_is_refused(model_copy):
    doc = json.loads((model_copy / CARD_FILE).read_text())
    doc["inputs"] = doc["inputs"][1:]
    doc.pop("reference")  # else refused earlier, for a reference of other inputs
    (model_copy / CARD_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="describes inputs"):
        load_model(model_copy)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelError, match="no model card"):
        load_model(tmp_path)


# --- scorer inspect ---------------------------------------------------------------------------


def test_inspect_prints_the_card_and_checks_it():
    result = CliRunner().invoke(cli, ["inspect", str(default_model_dir())])
    assert result.exit_code == 0, result.output
    for text in (
        "intent-v1",
        "checksum ok",
        "bounce_rate",
        "[0, 1]",
        "Jan Feb Mar",
        "isotonic",
        "ECE width",
        "calibrated",
        "history",
    ):
        assert text in result.output
    assert CliRunner().invoke(cli, ["inspect"]).output == result.output


def test_inspect_json():
    result = CliRunner().invoke(cli, ["inspect", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["checksum"] == "ok" and doc["name"] == "intent-v1"
    assert set(doc["metrics"]["holdout"]["raw"]) >= {
        "roc_auc",
        "brier",
        "log_loss",
        "ece_width",
        "ece_mass",
    }


def test_inspect_exits_2_on_checksum_mismatch(model_copy):
    graph = model_copy / GRAPH_FILE
    graph.write_bytes(b"not a graph")
    result = CliRunner().invoke(cli, ["inspect", str(model_copy)])
    assert result.exit_code == 2
    assert "CHECKSUM MISMATCH" in result.output and "ChecksumError:" in result.output
    assert result.stderr.startswith(f"ChecksumError: {graph}: sha256 ")
    assert result.stderr.count("\n") == 1 and "does not match" in result.stderr
    result = CliRunner().invoke(cli, ["inspect", "--json", str(model_copy)])
    assert result.exit_code == 2 and '"checksum": "mismatch"' in result.output


def test_inspect_exits_2_on_a_broken_card(model_copy):
    (model_copy / CARD_FILE).write_text("{")
    result = CliRunner().invoke(cli, ["inspect", str(model_copy)])
    assert result.exit_code == 2 and "ModelError:" in result.output
    assert result.stderr.startswith(f"ModelError: {model_copy / CARD_FILE}: unreadable model card")


def _with_categorical_input_as(model_dir, elem_type) -> None:
    """Rewrite model_dir's graph to take its categorical input as `elem_type`, cast to float
    first (the layout of graphs from earlier releases, which took int64 indices)."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    graph_path = model_dir / GRAPH_FILE
    proto = onnx.load_from_string(graph_path.read_bytes())
    (categorical,) = [i for i in proto.graph.input if i.name == "categorical"]
    categorical.type.tensor_type.elem_type = elem_type
    for node in proto.graph.node:
        node.input[:] = ["categorical_as_float" if x == "categorical" else x for x in node.input]
    cast = helper.make_node("Cast", ["categorical"], ["categorical_as_float"], to=TensorProto.FLOAT)
    proto.graph.node.insert(0, cast)
    payload = proto.SerializeToString()
    graph_path.write_bytes(payload)
    doc = json.loads((model_dir / CARD_FILE).read_text())
    doc["sha256"] = hashlib.sha256(payload).hexdigest()
    (model_dir / CARD_FILE).write_text(json.dumps(doc))


def test_graph_of_an_earlier_release_with_int64_indices_scores_the_same(model_copy, sessions):
    from onnx import TensorProto

    _with_categorical_input_as(model_copy, TensorProto.INT64)
    earlier = load_model(model_copy)
    assert earlier.feed_dtypes["categorical"] == np.int64
    expected = load_model().score(sessions, key_column="session_id")
    assert earlier.score(sessions, key_column="session_id").equals(expected)
    assert earlier.encode(sessions.slice(0, 5)).feed["categorical"].dtype == np.int64


def test_graph_input_of_a_type_the_scorer_cannot_feed_is_refused(model_copy):
    from onnx import TensorProto

    _with_categorical_input_as(model_copy, TensorProto.DOUBLE)
    with pytest.raises(ModelError, match=r"cannot feed: categorical: tensor\(double\)"):
        load_model(model_copy)
