"""Several rows of one applicant in one encrypted call (`rows/<count>`, engines/thermometer/module.py):
the decision of each of the applicant's rows, the co-parties' one row shared by all, on the
decision's own keys — equal to plaintext for every family, counted as that many decisions, and never
more than the co-parties allowed."""

import shutil

import numpy as np
import pytest
import requests
from helpers import by_party, multipart, plaintext_labels, quiet_party, random_rows
from test_explain import FAMILIES, additive_server  # noqa: F401 (a fixture)
from test_reasons import ADDITIVE_ENV

from anonymizer.engines.base import DECIDE
from anonymizer.engines.thermometer.explain import MAX_EXPLAIN_LOOKUPS
from anonymizer.engines.thermometer.model import ThermometerModel
from anonymizer.parties import PartyLayout
from anonymizer.party.transport import ProtocolError
from anonymizer.wire import ROW_BATCHES, ErrorCode, rows_function, rows_in
from challenge_stub.dataset import PARTY_LAYOUT


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request, credit_data):
    X, y = credit_data["training"]
    return ThermometerModel.train(X, y, PartyLayout(PARTY_LAYOUT), FAMILIES[request.param])


def offered_counts(functions) -> list[int]:
    return sorted(n for f in functions if (n := rows_in(f)))


def sharing_the_first_rows_rest(X: np.ndarray) -> np.ndarray:
    """X with every column but the applicant's taken from its first row: what one call decides."""
    shared = np.repeat(X[:1], len(X), axis=0)
    applicant = PARTY_LAYOUT["applicant"]
    shared[:, applicant] = X[:, applicant]
    return shared


def test_every_family_serves_several_rows_on_the_decisions_keys(model):
    counts = offered_counts(model.functions)
    assert counts and counts == [n for n in ROW_BATCHES if n * model.program.n_lookups <= MAX_EXPLAIN_LOOKUPS]
    served = model.compiled.runnable
    functions = served.module.functions()
    lookups = functions[model.functions[DECIDE]].programmable_bootstrap_count
    for count in counts:  # one decision's lookups per row, nothing more
        assert (
            functions[model.functions[rows_function(count)]].programmable_bootstrap_count == count * lookups
        )
    decision_only = model.compile(random_rows(200, seed=3)).runnable.decision_circuit
    assert served.module.size_of_bootstrap_keys == decision_only.size_of_bootstrap_keys
    assert served.module.size_of_keyswitch_keys == decision_only.size_of_keyswitch_keys


def test_each_row_is_decided_as_if_alone_in_the_clear_and_simulated_on_500_rows(model):
    functions = model.compiled.runnable.module.functions()
    counts = offered_counts(model.functions)
    X = random_rows(504, seed=8)
    done, calls = 0, 0
    while done + counts[-1] <= len(X):
        count = counts[calls % len(counts)]  # every offered count, in turn
        rows = sharing_the_first_rows_rest(X[done : done + count])
        arguments = model.circuit_arguments(rows)
        applicant = np.stack([row_arguments[0] for row_arguments in arguments])
        simulated = functions[model.functions[rows_function(count)]].simulate(applicant, *arguments[0][1:])
        clear = model.outputs(rows)
        assert np.array_equal(np.asarray(simulated).reshape(clear.shape), clear), done
        done, calls = done + count, calls + 1
    assert done >= 500


def test_the_co_parties_decision_ciphertexts_serve_several_rows_under_real_fhe(model):
    module = model.compiled.runnable.module
    module.keygen()
    functions = module.functions()
    decide, rows = functions[model.functions[DECIDE]], functions[model.functions[rows_function(2)]]
    X = sharing_the_first_rows_rest(random_rows(2, seed=9))
    arguments = model.circuit_arguments(X)
    co_parties = decide.encrypt(*arguments[0])[1:]  # what the co-parties staged for a decision
    applicant = rows.encrypt(np.stack([a[0] for a in arguments]), *arguments[0][1:])[0]
    result = rows.decrypt(rows.run(applicant, *co_parties))
    clear = model.outputs(X)
    assert np.array_equal(np.asarray(result).reshape(clear.shape), clear)


def test_three_parties_decide_eleven_rows_of_the_applicant_in_two_calls_equal_to_plaintext(
    additive_server,  # noqa: F811
    tmp_path,
):
    client = quiet_party(additive_server.url, tmp_path / "party")
    assert offered_counts(client.info().functions) == list(ROW_BATCHES)
    X = sharing_the_first_rows_rest(random_rows(11, seed=50))
    for party in ("bank", "credit_bureau"):  # 8 rows, then 3 padded to 4: 12 decisions
        client.stage(party, client.encrypt(party, by_party(X[0])[party]), uses=12)
    decisions = client.score_rows([by_party(row)["applicant"] for row in X])
    labels = plaintext_labels(additive_server, X)
    assert [d.label for d in decisions] == [client.info().classes[int(label)] for label in labels]
    assert len(set(labels)) == 2  # both decisions among the rows
    with pytest.raises(ProtocolError) as spent:  # two calls used all 12
        client.score({"applicant": by_party(X[0])["applicant"]})
    assert spent.value.code == ErrorCode.MISSING_INPUT
    others = {p: by_party(X[0])[p] for p in ("bank", "credit_bureau")}
    alone = client.score_rows([by_party(X[1])["applicant"]], others)
    assert [d.label for d in alone] == [decisions[1].label]  # one row: padded to two, one kept


def test_several_rows_take_nothing_staged_for_fewer_and_bad_asks_are_400(
    additive_server,  # noqa: F811
    tmp_path,
):
    client = quiet_party(additive_server.url, tmp_path / "party")
    key_id = client.key_id()
    X = sharing_the_first_rows_rest(random_rows(4, seed=51))
    values = by_party(X[0])
    four_rows = client.encrypt_rows("applicant", [by_party(row)["applicant"] for row in X], rows_function(4))
    one_row = client.encrypt("applicant", values["applicant"])
    for party in ("bank", "credit_bureau"):
        client.stage(party, client.encrypt(party, values[party]), uses=3)

    def ask(applicant: bytes, **fields) -> requests.Response:
        form = {**multipart(key_id, applicant=applicant), **{k: (None, v) for k, v in fields.items()}}
        return requests.post(additive_server.url + "/predict", files=form, timeout=120)

    short = ask(four_rows, rows="4")  # the co-parties allowed one decision fewer than it shows
    assert short.status_code == 400 and short.json()["code"] == "missing_input"
    assert "4 decisions" in short.json()["description"]
    for applicant, fields, code in (
        (four_rows, {"rows": "3"}, "not_offered"),
        (four_rows, {"rows": "x"}, None),
        (four_rows, {"rows": "4", "reasons": "1"}, None),
        (four_rows, {"rows": "4", "explain": "0"}, None),
        (one_row, {"rows": "2"}, None),  # a decision's ciphertext is not two rows
        (four_rows, {}, None),  # nor four rows a decision's
    ):
        response = ask(applicant, **fields)
        assert response.status_code == 400, fields
        assert code is None or response.json()["code"] == code
    for _ in range(3):  # every refusal left all the staged uses in place
        assert ask(one_row).status_code == 201
    for party in ("bank", "credit_bureau"):
        client.stage(party, client.encrypt(party, values[party]), uses=4)
    answer = ask(four_rows, rows="4")
    assert answer.status_code == 201 and answer.headers["X-FHE-Function"] == rows_function(4)
    shares = client.codec().decrypt_batch(answer.content, rows_function(4), 4)
    assert list(np.argmax(shares, axis=1)) == list(plaintext_labels(additive_server, X).astype(int))
    assert ask(one_row).json()["code"] == "missing_input"  # the call used all four


def test_an_applicant_cannot_buy_several_rows_for_one_decision_of_its_budget(
    additive_server,  # noqa: F811
    start_anonymizer,
    tmp_path,
):
    model_dir = tmp_path / "model"
    shutil.copytree(additive_server.model_dir, model_dir)
    server = start_anonymizer(
        model_dir=model_dir,
        **ADDITIVE_ENV,
        ANONYMIZER_DECISIONS_PER_KEY="8",
        ANONYMIZER_DECISION_WINDOW_SECONDS="600",
    )
    applicant = quiet_party(server.url, tmp_path / "applicant")
    X = sharing_the_first_rows_rest(random_rows(8, seed=52))
    others = {p: by_party(X[0])[p] for p in ("bank", "credit_bureau")}
    assert len(applicant.score_rows([by_party(row)["applicant"] for row in X[:4]], others)) == 4
    with pytest.raises(ProtocolError) as refused:  # 4 + 8 > 8: refused whole
        applicant.score_rows([by_party(row)["applicant"] for row in X], others)
    assert refused.value.code == ErrorCode.BUDGET_SPENT
    assert len(applicant.score_rows([by_party(row)["applicant"] for row in X[:3]], others)) == 3  # 4 left
    with pytest.raises(ProtocolError) as spent:
        applicant.score(by_party(X[0]))
    assert spent.value.code == ErrorCode.BUDGET_SPENT
