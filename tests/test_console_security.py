"""Issue 33: no other web page can drive a party's console. A page of another origin posting a
form or a no-cors fetch to it joins no key and stages nothing; markup in what the server sends
(feature names, party names, class labels) shows as text and runs nothing; and the console answers
only its own Host and Origin, with this launch's secret, JSON bodies of bounded size, and the
page's security headers on every answer. Real console processes on a real server where it
matters, headless Chromium for what a browser does."""

import functools
import http.client
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import requests
from helpers import CREDIT_ENV, plaintext_labels, quiet_party, random_rows
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_console import ConsoleApi, Page, console

from anonymizer.party.console import Launch, open_console
from anonymizer.wire import FheInfo
from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT
from devtools.launch import GunicornServer

PAILLIER_ENV = {"ANONYMIZER_ENCRYPTION": "paillier", "TREE_ADDITIVE": "1", "ADDITIVE_C": "0.01"}
POLICY = "default-src 'self'"


def markup(what: str) -> str:
    """`what` with an image whose error handler would mark the page as taken over."""
    return f"{what} <img src=x onerror=\"window.__pwned='{what}'\">"


@pytest.fixture(scope="module")
def paillier_scorer(paillier_template, tmp_path_factory, stub):
    """A real server of the fitted Paillier model (no /fit: copied from the session's template)."""
    model_dir = tmp_path_factory.mktemp("console-security") / "model"
    shutil.copytree(paillier_template, model_dir)
    env = {**CREDIT_ENV, **PAILLIER_ENV, "TREE_SELECTION": "off", "CHALLENGE_HOST": stub.host}
    env.update(MODEL_DIR=str(model_dir), MAX_KEYS_PER_OWNER="64")
    with GunicornServer("app:application", env=env, log_path=model_dir.parent / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def applicant(paillier_scorer, tmp_path_factory):
    """The applicant's console process on that server, as the page calls it (ConsoleApi)."""
    home = tmp_path_factory.mktemp("applicant-console")
    process, url = console(paillier_scorer.url, "applicant", home, home / "keys")
    try:
        yield ConsoleApi(url)
    finally:
        process.terminate()
        process.wait(timeout=30)


def port_of(api: ConsoleApi) -> int:
    return urlsplit(api.url).port


def assert_refused(response: requests.Response, status: int, title: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["title"] == title and response.json()["description"]


# --- plain HTTP: Host, Origin, token, body, headers ----------------------------------------------


def test_the_printed_url_carries_a_fresh_secret_in_its_fragment(applicant):
    assert applicant.url.startswith("http://127.0.0.1:") and len(applicant.token) >= 40
    first, second = Launch.new(8080), Launch.new(8080)
    assert first.token != second.token and first.url == f"http://127.0.0.1:8080/#token={first.token}"
    assert first.token not in repr(first)


def test_only_the_consoles_own_host_names_are_answered(applicant):
    port = port_of(applicant)
    for path in ("/", "/static/console.js", "/api/state"):  # DNS rebinding: evil.example -> 127.0.0.1
        refused = applicant.get(path, headers={"Host": f"evil.example:{port}"})
        assert_refused(refused, 421, "Misdirected Request")
        assert applicant.get(path, headers={"Host": f"127.0.0.1:{port + 1}"}).status_code == 421
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert applicant.get("/api/state", headers={"Host": host}).status_code == 200
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest("GET", "/", skip_host=True)  # no Host at all (HTTP/1.0)
    connection.endheaders()
    assert connection.getresponse().status == 421


def test_a_request_from_another_origin_is_refused(applicant):
    port = port_of(applicant)
    for origin in (f"http://127.0.0.1:{port + 1}", f"http://evil.example:{port}", "null"):
        assert_refused(applicant.get("/api/state", headers={"Origin": origin}), 403, "Another web page")
        assert applicant.get("/", headers={"Origin": origin}).status_code == 403
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        assert applicant.get("/api/state", headers={"Origin": origin}).status_code == 200


def test_every_api_call_needs_this_launchs_secret(applicant):
    last = "B" if applicant.token.endswith("A") else "A"  # a token one character off, never the token
    wrong = applicant.token[:-1] + last
    for path in ("/api/state", "/api/progress", "//api/state", "/favicon.ico"):
        for token in ({}, {"X-Console-Token": ""}, {"X-Console-Token": wrong}):
            refused = requests.get(applicant.url + path, headers=token, timeout=30)
            assert_refused(refused, 403, "Console token required")
    assert "#token=" in refused.json()["description"]
    assert requests.post(applicant.url + "/api/keys", json={}, timeout=30).status_code == 403
    for path in ("/", "/static/console.js", "/static/console.css"):  # the page holds no data
        assert requests.get(applicant.url + path, timeout=30).status_code == 200
    assert applicant.get("/api/state").status_code == 200


def test_a_post_takes_a_json_body_of_bounded_size_only(applicant):
    headers = {"X-Console-Token": applicant.token}
    url = applicant.url + "/api/keys"
    bodies = (
        {"data": {"key_id": "k", "fingerprint": "f"}},  # a cross-site <form>
        {"data": json.dumps({"key_id": "k"}), "headers": {"Content-Type": "text/plain"}},
        {"files": {"key_id": (None, "k")}},  # multipart
        {"data": b"{}"},  # no Content-Type
    )
    for body in bodies:
        sent = {**body, "headers": {**headers, **body.get("headers", {})}}
        assert_refused(requests.post(url, timeout=30, **sent), 415, "Unsupported Media Type")
    large = {"values": {"x" * 70_000: 1.0}}
    assert_refused(requests.post(url, json=large, headers=headers, timeout=30), 413, "Content Too Large")
    assert applicant.get("/api/state").json()["key_id"] is None  # none of them made a key


def test_every_answer_carries_the_pages_security_headers(applicant):
    port = port_of(applicant)
    answers = [
        applicant.get(path) for path in ("/", "/static/console.js", "/static/console.css", "/api/state")
    ]
    answers += [applicant.get("/api/state", headers={"Host": f"evil.example:{port}"})]
    answers += [requests.get(applicant.url + "/api/state", timeout=30), applicant.get("/nothing")]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 421, 403, 404]
    for answer in answers:
        policy = answer.headers["Content-Security-Policy"]
        assert policy.startswith(POLICY + ";") and "frame-ancestors 'none'" in policy
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert answer.headers["Cache-Control"] == "no-store"


# --- a page of another origin in the same browser -------------------------------------------------

ATTACK_PAGE = """<!doctype html><title>cat pictures</title>
<form id="join" method="POST" action="{console}/api/keys">
<input name="key_id" value="{key_id}"><input name="fingerprint" value="{fingerprint}"></form>
<script>
(async () => {{
  // what needs no preflight: a no-cors fetch with a form or text body, then a form's POST
  for (const body of [new URLSearchParams({{x: "1"}}), JSON.stringify({{uses: 1}})]) {{
    try {{ await fetch("{console}/api/stage", {{method: "POST", mode: "no-cors", body}}); }} catch (e) {{}}
  }}
  document.getElementById("join").submit();
}})();
</script>
"""


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def other_origin(tmp_path):
    """A web server of another origin (another port of 127.0.0.1) serving files of a directory."""
    root = tmp_path / "other-origin"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.root, server.url = root, f"http://127.0.0.1:{server.server_port}"
    yield server
    server.shutdown()
    server.server_close()


def test_a_page_of_another_origin_joins_no_key_and_stages_nothing(
    paillier_scorer, browser, other_origin, tmp_path
):
    row = random_rows(1, seed=333)[0]
    processes, apis = [], {}
    try:
        for party in PARTY_LAYOUT:
            process, url = console(paillier_scorer.url, party, tmp_path / party, tmp_path / party / "keys")
            processes.append(process)
            apis[party] = ConsoleApi(url)

        def step(party: str, name: str, body: dict) -> dict:
            response = apis[party].post(f"/api/{name}", body)
            assert response.status_code == 200, response.text
            return response.json()

        def values(party: str) -> dict:
            return {
                c["name"]: float(row[c["column"]]) for c in apis[party].get("/api/state").json()["columns"]
            }

        keys = step("applicant", "keys", {})
        pinned = {"key_id": keys["key_id"], "fingerprint": keys["fingerprint"]}
        for party in ("bank", "credit_bureau"):
            step(party, "keys", pinned)
            step(party, "encrypt", {"values": values(party)})
        step("credit_bureau", "stage", {})  # the bank has a ciphertext, not yet staged

        attacker = quiet_party(paillier_scorer.url, tmp_path / "attacker")  # a key it can read
        fields = {"key_id": attacker.key_id(), "fingerprint": attacker.key_fingerprint()}
        page = ATTACK_PAGE.format(console=apis["bank"].url, **fields)
        (other_origin.root / "index.html").write_text(page)
        browser.get(other_origin.url + "/")
        WebDriverWait(browser, 60).until(lambda d: d.current_url.startswith(apis["bank"].url + "/api/keys"))
        WebDriverWait(browser, 60).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )

        assert apis["bank"].get("/api/state").json()["key_id"] == keys["key_id"]  # not the attacker's
        undecided = apis["applicant"].post("/api/decide", {"values": values("applicant")})
        assert undecided.status_code == 400 and "'bank'" in undecided.json()["description"]
        step("bank", "stage", {})  # what the attack could not do, the bank's own page does
        decided = step("applicant", "decide", {"values": values("applicant")})
        assert decided["decision"] == plaintext_labels(paillier_scorer, row[None])[0]
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


# --- markup from the server shows as text ---------------------------------------------------------


def assert_not_taken_over(driver) -> None:
    assert driver.execute_script("return window.__pwned") is None
    assert driver.execute_script("return document.images.length") == 0


def enter(page: Page, row, columns) -> None:
    page.focus()
    for column in columns:
        page.driver.execute_script(f"document.getElementById('col-{column}').value = '{row[column]:g}'")


def test_feature_names_with_markup_show_as_text_through_a_decision(start_anonymizer, browser, tmp_path):
    names = [markup(name) for name in FEATURE_NAMES]
    alone = {"applicant": list(range(len(FEATURE_NAMES)))}  # one party: no co-party to stage
    server = start_anonymizer(
        TREE_ADDITIVE="1",
        TREE_N_BITS="4",
        ADDITIVE_C="0.01",
        ANONYMIZER_PARTIES=json.dumps(alone),
        FEATURE_NAMES=json.dumps(names),
    )
    assert requests.post(server.url + "/fit", timeout=300).status_code == 201
    rows = random_rows(200, seed=62)
    row = rows[plaintext_labels(server, rows) == 0][0]  # denied: reasons and explain to show
    process, url = console(server.url, "applicant", tmp_path / "applicant", tmp_path / "keys")
    try:
        page = Page(browser, url, tmp_path, "applicant")
        assert all(name in page.text("values") for name in names)
        page.click_and_wait("keys-button", "keys-result")
        enter(page, row, alone["applicant"])
        page.click_and_wait("encrypt-button", "encrypt-result")
        decision = page.click_and_wait("send-button", "send-result")
        assert "points lost" in decision and sum(name in decision for name in names) >= 2
        assert browser.find_element(By.ID, "decision").get_attribute("data-label") == "0"
        feature = browser.find_element(By.ID, "explain-feature").get_attribute("value")
        assert feature in names
        explained = page.click_and_wait("explain-button", "explain-result")
        assert feature in explained
        assert_not_taken_over(browser)
    finally:
        process.terminate()
        process.wait(timeout=30)


PARTY, CO_PARTY = markup("applicant"), markup("bank")
CLASSES = [markup("denied"), markup("approved")]
NAMES = [markup("income"), markup("age"), markup("debt")]
HOSTILE_INFO = {
    "parties": {PARTY: [0, 1], CO_PARTY: [2]},
    "n_features": 3,
    "keys_digest": markup("digest"),
    "model_version": markup("version"),
    "engine": markup("engine"),
    "scheme": markup("scheme"),
    "classes": CLASSES,
    "functions": {"decide": None, "reasons": markup("reasons")},
    "feature_names": NAMES,
    "encoding": {
        PARTY: {"columns": [0, 1], "edges": [[0.0, 1.0, 2.0], [10.0, 20.0]]},
        CO_PARTY: {"columns": [2], "edges": [[0.0, 1.0]]},
    },
}


class HostileScorer:
    """Stands in for the console's PartyClient: every string it gives is markup, as a hostile
    server (or an operator's FEATURE_NAMES, party layout or labels) could make it."""

    server_url = markup("server")
    gives_reasons = True
    log = None

    def info(self, refresh: bool = False) -> FheInfo:
        return FheInfo.from_document(HOSTILE_INFO)

    def known_key_id(self) -> None:
        return None

    def is_applicant(self, party: str) -> bool:
        return party == PARTY

    def key_id(self) -> str:
        return markup("key")

    def key_bytes(self) -> int:
        return 1000

    def encrypt(self, party: str, values: dict) -> bytes:
        return bytes(64)

    def reasons(self, values_by_party: dict, top: int | None = None) -> dict:
        rows = [(NAMES[0], PARTY, 4), (NAMES[2], CO_PARTY, markup("points"))]
        reasons = [{"feature": f, "party": p, "points_lost": n, "approves_alone": True} for f, p, n in rows]
        return {"decision": CLASSES[0], "probability": 0.75, "reasons": reasons}

    def explain(self, values_by_party: dict, party: str, feature: str) -> dict:
        answer = {"feature": feature, "value": 2.0, "change": 1.0, "probability_after": 0.6}
        return {**answer, "decision": CLASSES[0], "encrypted_predictions": 2}


@pytest.fixture
def hostile_console():
    """A console in this process around HostileScorer; its launch."""
    server, launch = open_console(HostileScorer(), PARTY)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield launch
    server.shutdown()
    server.server_close()


def test_markup_in_every_served_string_shows_as_text(hostile_console, browser, tmp_path):
    page = Page(browser, hostile_console.url, tmp_path, "applicant")
    assert page.text("party") == PARTY
    for shown in (HOSTILE_INFO["model_version"], HOSTILE_INFO["engine"], HOSTILE_INFO["scheme"], CO_PARTY):
        assert shown in page.text("model")
    assert HostileScorer.server_url in page.text("model")
    assert NAMES[0] in page.text("values") and NAMES[1] in page.text("values")
    assert markup("key") in page.click_and_wait("keys-button", "keys-result")
    page.click_and_wait("encrypt-button", "encrypt-result")
    decision = page.click_and_wait("send-button", "send-result")
    for shown in (CLASSES[0], NAMES[0], PARTY, NAMES[2], CO_PARTY, markup("points")):
        assert shown in decision
    assert browser.find_element(By.ID, "decision").get_attribute("data-label") == CLASSES[0]
    assert browser.find_element(By.ID, "explain-feature").get_attribute("value") == NAMES[0]
    assert NAMES[0] in page.click_and_wait("explain-button", "explain-result")
    assert_not_taken_over(browser)
    assert "#token=" not in browser.current_url  # out of the address bar and the history
