"""Trees, forests and boosted trees under Paillier (no shared secret): path costs in the clear
equal the trees, real Paillier equals plaintext, and one answer shows the applicant exactly what
docs/privacy.md says: a single tree's vote, or an ensemble's total, nothing per leaf or per tree."""

import numpy as np
import phe
import pytest
from engine_cases import three_classes
from helpers import (
    by_party,
    paillier_parties,
    plaintext_labels,
    quiet_party,
    random_rows,
    stage_as_cli_processes,
)

from anonymizer.engines.paillier import scheme
from anonymizer.engines.paillier.answers import MaskedLeaves
from anonymizer.engines.paillier.model import PaillierModel
from anonymizer.engines.thermometer.encoding import ThresholdEncoding
from anonymizer.engines.thermometer.leafsum import _leaves
from anonymizer.engines.thermometer.model import ThermometerModel, boosted_program, fit_estimator
from anonymizer.parties import PartyLayout
from anonymizer.settings import ModelSpec
from challenge_stub.dataset import PARTY_LAYOUT

TREE = ModelSpec(max_depth=5, n_bits=4)
FOREST = ModelSpec(max_depth=4, n_estimators=4, n_bits=4)
BOOSTED = ModelSpec(max_depth=3, n_estimators=6, boosted=True, n_bits=4)
LAYOUT = PartyLayout(PARTY_LAYOUT)


@pytest.fixture(scope="module")
def keypair():
    return phe.generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)


def labels_for(credit_data, classes: str):
    X, y = credit_data["training"]
    return X, (y if classes == "two" else three_classes(X, y))


EVERY_FAMILY = [(TREE, "two"), (TREE, "three"), (FOREST, "two"), (FOREST, "three"), (BOOSTED, "two")]


@pytest.mark.parametrize("spec, classes", EVERY_FAMILY)
def test_every_row_reaches_one_leaf_per_tree_the_one_scikit_learn_gives(credit_data, spec, classes):
    X, y = labels_for(credit_data, classes)
    encoding = ThresholdEncoding.fit(X, spec.n_bits)
    levels, targets = encoding.levels(X), np.searchsorted(np.unique(y), y)
    capabilities = PaillierModel.capabilities
    if spec.boosted:
        program, trees = boosted_program(levels, targets, spec, encoding, LAYOUT, capabilities)
    else:
        trees = fit_estimator(levels, targets, spec)
        program = PaillierModel.build(X, y, LAYOUT, spec).program
    reached = program.path_costs([encoding.bits(X, columns) for columns in LAYOUT.columns.values()])
    assert reached.shape[0] >= 500 and reached.max() == 0
    leaf_nodes = np.concatenate([_leaves(t.tree_) for t in trees])
    for index, tree in enumerate(trees):
        mine = program.trees == index
        hit = reached[:, mine] == 0
        assert (hit.sum(axis=1) == 1).all()  # exactly one leaf of each tree, every row
        assert np.array_equal(leaf_nodes[mine][np.argmax(hit, axis=1)], tree.apply(levels.astype(np.float32)))


@pytest.mark.parametrize("classes", ["two", "three"])
@pytest.mark.parametrize("spec", [TREE, FOREST], ids=["tree", "forest"])
def test_path_costs_decide_as_the_lookup_circuits_do(credit_data, spec, classes):
    X, y = labels_for(credit_data, classes)
    paths = PaillierModel.build(X, y, LAYOUT, spec)
    lookups = ThermometerModel.build(X, y, LAYOUT, spec)
    assert paths.program.kind == "leaf_paths" and lookups.program.kind == "leaf_sum"
    assert np.array_equal(paths.outputs(X), lookups.outputs(X))  # the same votes, every row


@pytest.mark.parametrize("spec, classes", EVERY_FAMILY)
def test_real_paillier_equals_plaintext_for_every_tree_family(credit_data, spec, classes):
    X, y = labels_for(credit_data, classes)
    model = PaillierModel.train(X, y, LAYOUT, spec)
    assert model.info["pbs_count"] == 0 and model.program.kind == "leaf_paths"
    rows = np.concatenate([random_rows(3, seed=61), X[:2]])
    assert np.array_equal(model.execute(rows), model.predict(rows))


def answer_values(model, row: np.ndarray, keypair) -> list[int]:
    """What the applicant decrypts from one answer for `row`: every value, signed."""
    public_key, private_key = keypair
    parts = [
        scheme.pack(public_key, scheme.encrypt_bits(public_key, z[0], private_key))
        for z in model.party_bits(row[None])
    ]
    key = model.parse_keys(scheme.public_key_bytes(public_key))
    result = model.run_encrypted(parts, key)
    count = MaskedLeaves().served(model.program)
    return scheme.decrypt_signed(private_key, scheme.unpack(public_key, result, count, "result"))


def readable(values: list[int], model) -> list[int]:
    bound = 1 << MaskedLeaves().bound_bits(model.program)
    return [v for v in values if -bound < v < bound]


def assert_unreached_values_look_uniform(values: list[int], n: int) -> None:
    """An unreached leaf's value r * x + v is uniform mod n: never short (as r * x would be with
    an r shorter than n), and spread over [0, n) (mean near n / 2, a tenth of them below n / 10)."""
    residues = np.array([v % n / n for v in values], dtype=np.float64)
    assert len(values) >= 100
    assert all(abs(v) > n >> 64 for v in values)
    assert abs(residues.mean() - 0.5) < 0.1 and 0.02 < np.mean(residues < 0.1) < 0.25


def test_a_single_trees_answer_shows_its_vote_and_nothing_of_the_other_leaves(credit_data, keypair):
    X, y = labels_for(credit_data, "three")
    model = PaillierModel.train(X, y, LAYOUT, TREE)
    plan, default = MaskedLeaves.plan(model.program)
    assert model.info["tree_leaves"] > len(plan) > 0  # the most common vote's leaves are left out
    unreached = []
    for row in X[:20]:
        values = answer_values(model, row, keypair)
        vote = int(model.outputs(row[None])[0])
        shown = readable(values, model)
        assert shown == ([] if vote == default else [vote])  # the decision, as the class index
        unreached += [v for v in values if v not in shown]
    assert_unreached_values_look_uniform(unreached, keypair[0].n)


def test_an_ensembles_answer_shows_its_total_and_no_tree_alone(credit_data, keypair):
    X, y = labels_for(credit_data, "two")
    model = PaillierModel.train(X, y, LAYOUT, FOREST)
    row, trees = X[3], model.program.n_trees
    total = int(model.outputs(row[None])[0])
    answers = [answer_values(model, row, keypair) for _ in range(3)]
    seen = [readable(values, model) for values in answers]
    for shown in seen:
        assert len(shown) == trees and sum(shown) == total
        # masked: a tree's vote is 0 or 1, what is shown of it is a draw of 80 bits and more
        assert max(abs(v) for v in shown) > 1 << 64
    assert len({tuple(sorted(shown)) for shown in seen}) == 3  # fresh masks every answer
    positions = [tuple(i for i, v in enumerate(values) if v in shown) for values, shown in zip(answers, seen)]
    assert len(set(positions)) > 1  # shuffled: where a value sits says nothing of its leaf
    unreached = [v for values, shown in zip(answers, seen) for v in values if v not in shown]
    assert_unreached_values_look_uniform(unreached, keypair[0].n)


def test_an_answer_no_honest_server_sends_is_refused_by_the_applicant():
    decoding = {"n_trees": 3, "n_classes": 2, "bound_bits": 90, "default": 0}
    assert MaskedLeaves.output([5, -3, 1 << 100, 7], decoding) == 9
    with pytest.raises(ValueError, match="2 readable leaf values for 3 trees"):
        MaskedLeaves.output([5, 1 << 100, 7], decoding)
    with pytest.raises(ValueError, match="2 readable"):
        MaskedLeaves.output([1, 2], {**decoding, "n_trees": 1})


@pytest.fixture(scope="module", params=["tree", "forest", "boosted"])
def tree_server(request, serve_fitted):
    """Paillier serving a fixed tree family (selection off), each in its own gunicorn."""
    family = {
        "tree": {"TREE_MAX_DEPTH": "5"},
        "forest": {"TREE_MAX_DEPTH": "4", "TREE_N_ESTIMATORS": "4"},
        "boosted": {"TREE_MAX_DEPTH": "3", "TREE_N_ESTIMATORS": "6", "TREE_BOOSTED": "1"},
    }[request.param]
    with serve_fitted(ANONYMIZER_ENCRYPTION="paillier", TREE_SELECTION="off", **family) as server:
        yield request.param, server


def test_three_parties_decide_with_trees_where_only_the_applicant_holds_a_secret(tree_server, tmp_path):
    family, server = tree_server
    applicant, bank, bureau = paillier_parties(server.url, tmp_path)
    info = applicant.info()
    assert info.decoding["answer"] == "masked_leaves" and info.pbs_count == 0
    X = random_rows(12, seed=62)
    decisions = []
    for row in X:
        values = by_party(row)
        bank.stage("bank", bank.encrypt("bank", values["bank"]))
        bureau.stage("credit_bureau", bureau.encrypt("credit_bureau", values["credit_bureau"]))
        label, probability = applicant.score({"applicant": values["applicant"]})
        assert (probability is None) == (family == "tree")  # a single tree's answer is its vote
        decisions.append(label)
    assert decisions == plaintext_labels(server, X).tolist()
    assert list((tmp_path / "applicant").rglob("paillier-private.json"))
    for co_party in ("bank", "bureau"):
        assert not list((tmp_path / co_party).rglob("paillier-private.json"))


def test_co_parties_as_their_own_cli_processes_hold_no_secret_under_trees(tree_server, tmp_path):
    _, server = tree_server
    applicant = quiet_party(server.url, tmp_path / "applicant")
    row = random_rows(1, seed=63)[0]
    values = by_party(row)
    co_parties = {party: values[party] for party in ("bank", "credit_bureau")}
    stage_as_cli_processes(server.url, tmp_path, applicant, co_parties)
    label, _ = applicant.score({"applicant": values["applicant"]})
    assert label == plaintext_labels(server, row[None])[0]
