"""Issue 32: encrypted decisions are budgeted per key and per owner in a fixed window, shared by
every gunicorn worker and kept across restarts; beyond it 429 + Retry-After before any body is
read; a failed decision costs nothing; plaintext /predict is never budgeted."""

import concurrent.futures
import shutil
from pathlib import Path

import pytest
import requests
from helpers import multipart, plaintext_labels, quiet_party, random_rows

from anonymizer.config import Config
from anonymizer.settings import DecisionLimits
from anonymizer.state.decisions import BudgetSpent, DecisionBudget
from challenge_stub.dataset import PARTY_LAYOUT

PAILLIER_ENV = {"ANONYMIZER_ENCRYPTION": "paillier", "TREE_ADDITIVE": "1", "ADDITIVE_C": "0.01"}


@pytest.fixture
def serve(paillier_template, start_anonymizer, tmp_path):
    """A gunicorn server (2 workers) on a copy of the Paillier model, with extra environment."""

    def start(**env):
        model_dir = tmp_path / f"model-{len(list(tmp_path.glob('model-*')))}"
        shutil.copytree(paillier_template, model_dir)
        return start_anonymizer(model_dir=model_dir, **PAILLIER_ENV, **env)

    return start


class Applicant:
    """A key owner that sends every party's part inline (no tokens: nothing binds the slots)."""

    def __init__(self, url, workdir, headers=None) -> None:
        self.url = url
        self.headers = headers or {}
        self.party = quiet_party(url, workdir, busy_retries=0)
        if headers:
            self.party.transport.session.headers.update(headers)
        self.key_id = self.party.key_id()

    def parts(self, row) -> dict:
        return {p: self.party.encrypt(p, row[c].tolist()) for p, c in PARTY_LAYOUT.items()}

    def decide(self, parts, session=requests) -> requests.Response:
        files = multipart(self.key_id, self.party.version, **parts)
        return session.post(self.url + "/predict", files=files, headers=self.headers, timeout=120)


def assert_spent(response, kind: str, window: float) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "budget_spent" and kind in response.json()["description"]
    assert 1 <= int(response.headers["Retry-After"]) <= window


def test_the_fourth_decision_of_a_key_is_refused_while_another_key_still_decides(serve, tmp_path):
    server = serve(ANONYMIZER_DECISIONS_PER_KEY="3", ANONYMIZER_DECISION_WINDOW_SECONDS="600")
    rows = random_rows(4, seed=321)
    first = Applicant(server.url, tmp_path / "first")
    parts = first.parts(rows[0])
    bad = {**parts, "bank": b"not a ciphertext"}
    for _ in range(2):  # refused input costs no decision
        assert first.decide(bad).status_code == 400
    for _ in range(3):
        answer = first.decide(parts)
        assert answer.status_code == 201, answer.text
        assert first.party.decrypt(answer.content)[0] == plaintext_labels(server, rows[:1])[0]
    assert_spent(first.decide(parts), "key", 600)

    second = Applicant(server.url, tmp_path / "second")  # the same owner (address), its own key
    answer = second.decide(second.parts(rows[1]))
    assert answer.status_code == 201, answer.text
    assert len(plaintext_labels(server, random_rows(50, seed=322))) == 50  # plaintext: no budget
    assert plaintext_labels(server, random_rows(50, seed=323)).shape == (50,)


def test_an_owner_budget_spans_its_keys_and_spares_other_owners(serve, tmp_path):
    server = serve(
        ANONYMIZER_DECISIONS_PER_KEY="0",  # off: only the owner's budget counts
        ANONYMIZER_DECISIONS_PER_OWNER="3",
        ANONYMIZER_DECISION_WINDOW_SECONDS="900",
    )
    row = random_rows(1, seed=324)[0]
    mine = {"X-Forwarded-For": "10.0.0.1"}  # as our nginx forwards the client's address
    one, two = (Applicant(server.url, tmp_path / name, mine) for name in ("one", "two"))
    parts_one, parts_two = one.parts(row), two.parts(row)
    assert [one.decide(parts_one).status_code for _ in range(2)] == [201, 201]
    assert two.decide(parts_two).status_code == 201
    assert_spent(two.decide(parts_two), "owner", 900)
    refused = requests.post(  # refused before the body: even a garbage body answers 429
        server.url + "/predict",
        files={"key_id": (None, "x"), "junk": (None, "y")},
        headers=mine,
        timeout=60,
    )
    assert_spent(refused, "owner", 900)
    assert_spent(one.decide(parts_one), "owner", 900)

    other = Applicant(server.url, tmp_path / "other", {"X-Forwarded-For": "10.0.0.2"})
    assert other.decide(other.parts(row)).status_code == 201


def sessions_on_each_worker(server) -> dict[str, requests.Session]:
    """A kept-alive connection to each gunicorn worker (opened at once, so both workers accept)."""
    found: dict[str, requests.Session] = {}
    for _ in range(20):
        sessions = [requests.Session() for _ in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda s: s.get(server.url + "/", timeout=10), sessions))
        for session, answer in zip(sessions, answers, strict=True):
            found.setdefault(answer.json()["worker"], session)
        if len(found) == 2:
            return found
    pytest.fail("no connection reached the second worker")


def test_the_count_is_shared_by_both_workers_and_survives_a_restart(serve, tmp_path):
    server = serve(
        ANONYMIZER_DECISIONS_PER_KEY="3",
        ANONYMIZER_DECISIONS_PER_OWNER="0",
        GUNICORN_CMD_ARGS="--keep-alive 60",  # each session stays with the worker that accepted it
    )
    applicant = Applicant(server.url, tmp_path / "applicant")
    parts = applicant.parts(random_rows(1, seed=325)[0])
    (pid_a, on_a), (pid_b, on_b) = sessions_on_each_worker(server).items()

    def decide(session, pid) -> requests.Response:
        answer = applicant.decide(parts, session)
        assert session.get(server.url + "/", timeout=10).json()["worker"] == pid  # same worker
        return answer

    assert [decide(on_a, pid_a).status_code for _ in range(2)] == [201, 201]
    assert decide(on_b, pid_b).status_code == 201  # the third decision, counted by the other worker
    assert_spent(decide(on_a, pid_a), "key", 86_400)
    assert_spent(decide(on_b, pid_b), "key", 86_400)

    second = Applicant(server.url, tmp_path / "second")  # at once from many connections: exactly 3
    burst = second.parts(random_rows(1, seed=326)[0])

    def race() -> requests.Response:
        while True:
            answer = second.decide(burst)
            if answer.status_code != 429 or answer.json()["code"] == "budget_spent":
                return answer  # (another 429 is a worker's share of the executors: retry)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: race(), range(8)))
    assert sorted(a.status_code for a in answers) == [201] * 3 + [429] * 5, [a.text for a in answers]

    server.stop()
    server.start()  # a new master and workers over the same MODEL_DIR
    assert_spent(applicant.decide(parts), "key", 86_400)
    assert_spent(second.decide(burst), "key", 86_400)


def test_the_budget_counts_in_fixed_windows_and_refunds_failures(tmp_path):
    now = [1_000_000.0]
    limits = DecisionLimits(per_key=2, per_owner=3, window_seconds=100)
    budget = DecisionBudget(tmp_path / "d", limits, lambda: now[0])

    def files() -> list[str]:
        return sorted(p.name for p in (tmp_path / "d").iterdir() if not p.name.startswith("."))

    spent = [budget.spend("key-a", "alice") for _ in range(2)]
    with pytest.raises(BudgetSpent, match="key's 2 decisions per 100 s") as refused:
        budget.spend("key-a", "alice")
    assert refused.value.retry_after == 100
    budget.refund(spent[0])  # a failed decision gives its share back to the key and the owner
    assert budget.remaining("key-a", "alice") == {"key": 1, "owner": 2}
    budget.spend("key-b", "alice")
    budget.spend("key-b", "alice")
    with pytest.raises(BudgetSpent, match="owner's 3 decisions"):
        budget.check_owner("alice")
    with pytest.raises(BudgetSpent, match="owner's"):
        budget.spend("key-c", "alice")  # a fresh key does not reset its owner's budget
    budget.spend("key-c", "bob")
    assert len(files()) == 5 and not any("alice" in n or "key-" in n for n in files())
    now[0] += 60
    with pytest.raises(BudgetSpent) as refused:
        budget.spend("key-b", "alice")
    assert refused.value.retry_after == 40
    now[0] += 40  # the window ends: every decision is free again
    assert budget.remaining("key-a", "alice") == {"key": 2, "owner": 3}
    budget.spend("key-a", "alice")
    budget.refund(spent[1])  # from an ended window: gives nothing back
    assert budget.remaining("key-a", "alice") == {"key": 1, "owner": 2}
    assert len(files()) == 2  # the ended windows' files are gone
    now[0] += 500
    budget.spend("key-z", "carol")
    assert len(files()) == 2


def test_limits_are_read_from_the_environment():
    assert Config.from_env({}).decisions == DecisionLimits(1000, 10_000, 86_400.0)
    env = {
        "ANONYMIZER_DECISIONS_PER_KEY": "3",
        "ANONYMIZER_DECISIONS_PER_OWNER": "0",
        "ANONYMIZER_DECISION_WINDOW_SECONDS": "60",
    }
    assert Config.from_env(env).decisions == DecisionLimits(3, 0, 60.0)
    with pytest.raises(ValueError, match=">= 0"):
        Config.from_env({"ANONYMIZER_DECISIONS_PER_KEY": "-1"})
    with pytest.raises(ValueError, match="at least 1"):
        Config.from_env({"ANONYMIZER_DECISION_WINDOW_SECONDS": "0"})
    off = DecisionBudget(Path("/nonexistent/decisions"), DecisionLimits(0, 0))
    assert off.spend("k", "o") is None  # no limit: nothing is counted or written
