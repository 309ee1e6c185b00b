"""The model card's reference (`scorer.model.reference`): what `train`, `calibrate` and the
bundled card hold, that adding it changed no score, and that a malformed one is refused by key."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from scorer.errors import ModelError
from scorer.jobs.generate import generate
from scorer.model.card import CARD_FILE, GRAPH_FILE, load_card
from scorer.model.reference import SCORE_COLUMN, bin_counts, numeric_edges
from scorer.model.runtime import default_model_dir, load_model
from scorer.model.sessions import bundled_sessions_path, load_bundled_sessions
from scorer.model.train import CALENDAR, SEASON, add_reference, recalibrate, train

# model.onnx of intent-v1 as released (1.0.1): adding the reference must not touch it.
BUNDLED_SHA256 = "7f1c7bf5e0de49f8003be98d4976c12024ae53fd78dd4ffd559858695ed2efb6"


@pytest.fixture
def bundled_copy(tmp_path):
    directory = tmp_path / "intent-v1"
    shutil.copytree(default_model_dir(), directory)
    return directory


def _without_reference(directory):
    doc = json.loads((directory / CARD_FILE).read_text())
    doc.pop("reference")
    (directory / CARD_FILE).write_text(json.dumps(doc))
    return directory


def test_bundled_card_has_a_reference_and_its_graph_is_unchanged():
    directory = default_model_dir()
    graph = (directory / GRAPH_FILE).read_bytes()
    assert hashlib.sha256(graph).hexdigest() == BUNDLED_SHA256
    card = load_card(directory)
    reference = card.reference
    assert card.sha256 == BUNDLED_SHA256 and reference is not None
    assert [c.name for c in reference.columns] == [*card.input_names, SCORE_COLUMN]
    assert (reference.rows, reference.positives) == (12_330, 1_908)
    assert reference.season == SEASON and reference.calendar == CALENDAR
    assert sum(rows for rows, _ in reference.seasons.values()) == reference.rows
    for column in reference.columns:
        assert sum(column.counts) == reference.rows, column.name
        assert sum(sum(part.counts) for part in column.by_season.values()) == reference.rows


def test_scores_with_and_without_the_reference_are_bit_identical(bundled_copy):
    sessions = load_bundled_sessions()
    with_reference = load_model(default_model_dir()).score(sessions, key_column="session_id")
    plain = load_model(_without_reference(bundled_copy))
    assert plain.card.reference is None  # an older card still loads and scores
    assert plain.score(sessions, key_column="session_id").equals(with_reference)


def test_bundled_reference_is_what_add_reference_rebuilds(bundled_copy):
    rebuilt = add_reference(bundled_sessions_path(), _without_reference(bundled_copy))
    bundled = load_card(default_model_dir()).reference
    assert rebuilt.reference is not None and bundled is not None
    assert rebuilt.reference.columns == bundled.columns
    assert rebuilt.reference.seasons == bundled.seasons
    assert hashlib.sha256((bundled_copy / GRAPH_FILE).read_bytes()).hexdigest() == BUNDLED_SHA256
    assert load_card(bundled_copy) == rebuilt  # what was written reads back the same


def test_train_writes_a_reference_and_calibrate_refreshes_only_the_scores(tmp_path):
    sessions = load_bundled_sessions()
    card = train(sessions, tmp_path / "model", calibration="platt", seed=1)
    reference = card.reference
    assert reference is not None and reference.rows == sessions.num_rows
    assert reference.base_rate == pytest.approx(np.mean(sessions["converted"].to_numpy()))
    newer = tmp_path / "newer"
    generate(newer, sessions=6_000, files=1, days=1, seed=3, conversion_rate=0.05)
    recalibrated = recalibrate(newer, tmp_path / "model", tmp_path / "recalibrated")
    refreshed = recalibrated.reference
    assert refreshed is not None
    assert refreshed.columns[:-1] == reference.columns[:-1]  # the training data's inputs
    assert refreshed.columns[-1] != reference.columns[-1]
    assert refreshed.rows == 6_000 and refreshed.base_rate < reference.base_rate
    assert set(refreshed.seasons) == {"Nov"} and refreshed.score_data != refreshed.data


def test_zero_inflated_numeric_gets_a_bin_for_zero():
    values = np.concatenate([np.zeros(800), np.arange(1, 201)]).astype(np.float32)
    edges = numeric_edges(values)
    counts = bin_counts(values, edges)
    assert counts[0] == 800 and sum(counts) == 1_000 and len(counts) <= 10
    continuous = numeric_edges(np.arange(1_000, dtype=np.float32))
    assert bin_counts(np.arange(1_000, dtype=np.float32), continuous) == (100,) * 10


def _edit(doc, key, value):
    target = doc["reference"]
    *parents, last = key.split(".")
    for parent in parents:
        target = target[int(parent)] if parent.isdigit() else target[parent]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("rows", _DELETE, "'rows'"),
        ("positives", -1, "'positives'"),
        ("season", "day_of_week", "'season'"),
        ("columns.0.counts", [1, 2], "reference.columns[0].'counts'"),
        ("columns.0.edges", [3.0, 2.0], "reference.columns[0].'edges'"),
        ("columns.10.mean", 1.5, "reference.columns[10].'mean'"),
        ("columns.0.name", "clicks", "'columns'"),
        ("seasons.Smarch", {"rows": 1, "positives": 0}, "'Smarch'"),
    ],
)
def test_malformed_reference_is_refused_naming_the_key(bundled_copy, key, value, named):
    doc = json.loads((bundled_copy / CARD_FILE).read_text())
    _edit(doc, key, value)
    (bundled_copy / CARD_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelError) as caught:
        load_card(bundled_copy)
    assert named in str(caught.value) and CARD_FILE in str(caught.value)
