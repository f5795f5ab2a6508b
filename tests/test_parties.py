import json

import numpy as np
import pytest

from anonymizer.config import Config
from anonymizer.parties import LayoutError, PartyLayout
from anonymizer.service.training import resolve_layout
from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT


def test_without_a_configured_layout_one_data_holder_owns_every_column():
    config = Config.from_env({})
    assert config.parties is None and config.feature_names is None
    layout = resolve_layout(config.parties, 4)
    assert layout.to_dict() == {"data_holder": [0, 1, 2, 3]}
    layout.check_width(4)


def test_configured_layout_and_names_are_used_as_given():
    config = Config.from_env(
        {"ANONYMIZER_PARTIES": json.dumps(PARTY_LAYOUT), "FEATURE_NAMES": json.dumps(FEATURE_NAMES)}
    )
    assert resolve_layout(config.parties, 15).names == ["applicant", "bank", "credit_bureau"]
    assert config.feature_names == FEATURE_NAMES


def test_parse_json_text_and_file(tmp_path):
    text = json.dumps({"b": [1, 3], "a": [0, 2]})
    path = tmp_path / "parties.json"
    path.write_text(text)
    for source in (text, str(path)):
        layout = PartyLayout.parse(source)
        assert layout.names == ["b", "a"]  # argument order is the object's order
        assert list(layout.argument_columns) == [1, 3, 0, 2]


def test_split_takes_non_contiguous_columns_in_argument_order():
    layout = PartyLayout({"bank": [3, 0], "applicant": [1, 2]})
    X = np.arange(8).reshape(2, 4)
    bank, applicant = layout.split(X)
    assert bank.tolist() == [[3, 0], [7, 4]]
    assert applicant.tolist() == [[1, 2], [5, 6]]
    assert layout.index_of("applicant") == 1


@pytest.mark.parametrize(
    "columns, message",
    [
        ({}, "non-empty"),
        ([1, 2], "non-empty JSON object"),
        ({"a": []}, "non-empty list"),
        ({"a": [0, 1], "b": [1]}, "more than one party"),
        ({"a": [-1]}, "not a column index"),
        ({"a": ["0"]}, "not a column index"),
        ({"a": [True]}, "not a column index"),
        ({"bad name": [0]}, "identifier"),
    ],
)
def test_malformed_layouts_are_refused(columns, message):
    with pytest.raises(LayoutError, match=message):
        PartyLayout(columns)


def test_unreadable_sources_are_refused(tmp_path):
    with pytest.raises(LayoutError, match="not valid JSON"):
        PartyLayout.parse("{not json")
    with pytest.raises(LayoutError, match="Cannot read"):
        PartyLayout.parse(str(tmp_path / "missing.json"))


def test_width_check_names_missing_and_unknown_columns():
    layout = PartyLayout({"a": [0, 1], "b": [5]})
    with pytest.raises(LayoutError, match=r"columns \[2, 3, 4\] belong to no party"):
        layout.check_width(6)
    with pytest.raises(LayoutError, match=r"columns \[5\] do not exist"):
        layout.check_width(2)


@pytest.mark.parametrize(
    "host, url",
    [
        ("example-challenge", "http://example-challenge"),
        ("example-challenge:8001", "http://example-challenge:8001"),
        ("http://10.0.0.5:8001/", "http://10.0.0.5:8001"),
        ("https://challenge.example", "https://challenge.example"),
    ],
)
def test_challenge_host_may_be_a_bare_host_a_host_port_or_a_url(host, url):
    assert Config.from_env({"CHALLENGE_HOST": host}).challenge_url == url


@pytest.mark.parametrize(
    "text, expected", [("1", True), ("Yes", True), ("on", True), ("0", False), ("OFF", False)]
)
def test_yes_no_settings_read_one_way(text, expected):
    assert Config.from_env({"TREE_ADDITIVE": text}).tree.additive is expected
    assert Config.from_env({"TREE_ADDITIVE": ""}).tree.additive is False  # empty: the default


def test_a_yes_no_setting_that_is_neither_is_refused_naming_it():
    with pytest.raises(ValueError, match="TREE_ADDITIVE must be 1 or 0"):
        Config.from_env({"TREE_ADDITIVE": "of"})  # a typo must not mean yes


def test_model_settings_have_names_that_say_what_they_hold_and_keep_their_old_ones():
    new = {"MODEL_SELECTION": "off", "MODEL_ADDITIVE": "1", "ENCODING_BITS": "4", "MODEL_RANDOM_STATE": "7"}
    old = {"TREE_SELECTION": "off", "TREE_ADDITIVE": "1", "TREE_N_BITS": "4", "TREE_RANDOM_STATE": "7"}
    assert Config.from_env(new) == Config.from_env(old) == Config.from_env({**new, **old})
    chosen = Config.from_env(new)
    assert chosen.selection is None and chosen.tree.additive and chosen.tree.n_bits == 4
    assert chosen.tree.random_state == 7 and Config.from_env({}).tree.n_bits != 4
    with pytest.raises(ValueError, match="ENCODING_BITS='4' and its old name TREE_N_BITS='5' disagree"):
        Config.from_env({"ENCODING_BITS": "4", "TREE_N_BITS": "5"})
    with pytest.raises(ValueError, match="TREE_SELECTION must be 'auto' or 'off'"):
        Config.from_env({"TREE_SELECTION": "of"})  # the message names what was set
