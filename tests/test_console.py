"""The party console in a real browser: headless Chromium (Debian's, driven by Selenium) on three
consoles — applicant, bank, credit bureau, each its own process — against a live server on the
stub; each enters its values, the co-parties stage, the applicant decides; the decision must be
plaintext /predict's. CONSOLE_SCREENSHOTS=docs/console keeps the screenshots for the docs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
from helpers import plaintext_labels, random_rows
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from challenge_stub.dataset import PARTY_LAYOUT
from devtools.launch import ROOT

PARTIES = list(PARTY_LAYOUT)


def console(server_url: str, party: str, workdir: Path, shared: Path):
    """A console process of `party`; (process, the URL it printed: its launch secret in the fragment)."""
    command = [sys.executable, "-m", "anonymizer.party", "--server", server_url, "--workdir", str(workdir)]
    command += ["--keys-dir", str(shared), "console", "--party", party]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    assert "console of" in line, line
    return process, line.split(" on ")[1].split()[0]


class ConsoleApi:
    """A console's `/api/*` as its own page calls it: with the launch secret from the printed URL."""

    def __init__(self, printed_url: str) -> None:
        base, _, fragment = printed_url.partition("#token=")
        self.url, self.token = base.rstrip("/"), fragment

    def get(self, path: str, headers: dict | None = None) -> requests.Response:
        headers = {"X-Console-Token": self.token, **(headers or {})}
        return requests.get(self.url + path, headers=headers, timeout=30)

    def post(self, path: str, body: dict, timeout: float = 300) -> requests.Response:
        headers = {"X-Console-Token": self.token}
        return requests.post(self.url + path, json=body, headers=headers, timeout=timeout)


class Page:
    """One console in the browser's tab of its own."""

    def __init__(self, driver, url: str, shots: Path, party: str) -> None:
        self.driver, self.url, self.shots, self.party = driver, url, shots, party
        driver.switch_to.new_window("tab")
        self.handle = driver.current_window_handle
        driver.get(url)
        self.wait_for(lambda d: d.find_elements(By.CSS_SELECTOR, "#values input"))

    def wait_for(self, condition, timeout: float = 300):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(condition)

    def focus(self) -> "Page":
        self.driver.switch_to.window(self.handle)
        return self

    def text(self, element_id: str) -> str:
        return self.driver.find_element(By.ID, element_id).text

    def click_and_wait(self, button: str, result: str) -> str:
        """Click `button`, wait until `result` or the error box shows something; its text (also
        kept, with the step's wall time in the browser, in `steps.json` beside the screenshots)."""
        self.focus()
        self.driver.execute_script(f"document.getElementById('{result}').textContent = ''")
        started = time.monotonic()
        self.driver.find_element(By.ID, button).click()
        self.wait_for(lambda d: self.text(result) or d.find_element(By.ID, "error").is_displayed())
        assert not self.driver.find_element(By.ID, "error").is_displayed(), self.text("error")
        record = self.shots / "steps.json"
        steps = json.loads(record.read_text()) if record.exists() else []
        steps.append(
            {
                "party": self.party,
                "step": button,
                "seconds": round(time.monotonic() - started, 2),
                "shows": self.text(result)[:300],
            }
        )
        record.write_text(json.dumps(steps, indent=1))
        return self.text(result)

    def enter(self, row: np.ndarray) -> None:
        self.focus()
        for column in PARTY_LAYOUT[self.party]:
            self.driver.execute_script(f"document.getElementById('col-{column}').value = '{row[column]:g}'")

    def shot(self, name: str) -> None:
        self.focus()
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))


def test_three_consoles_stage_and_decide_like_plaintext_predict(
    start_fitted, start_anonymizer, browser, tmp_path
):
    # the fixed scorecard (reasons too), fitted once per session: test_reasons serves it as well
    server = start_fitted(TREE_ADDITIVE="1", TREE_N_BITS="4", ADDITIVE_C="0.01", TREE_SELECTION="off")
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    (shots / "steps.json").unlink(missing_ok=True)
    processes, pages = [], {}
    try:
        for party in PARTIES:
            process, url = console(server.url, party, tmp_path / party, tmp_path / "shared-keys")
            processes.append(process)
            pages[party] = Page(browser, url, shots, party)
        applicant, *co_parties = PARTIES
        assert pages[applicant].text("model").startswith("model ")
        keys = pages[applicant].click_and_wait("keys-button", "keys-result")
        assert "key id" in keys
        pages[applicant].shot("1-applicant-keys")
        rows = random_rows(200, seed=61)
        denied = rows[plaintext_labels(server, rows) == 0]  # an applicant with reasons to show
        row = denied[0] if len(denied) else rows[0]
        for party in co_parties:
            page = pages[party]
            page.enter(row)
            assert "key id" in page.click_and_wait("keys-button", "keys-result")
            assert "bytes of ciphertext" in page.click_and_wait("encrypt-button", "encrypt-result")
            page.driver.execute_script("document.getElementById('uses').value = '20'")  # for explain
            assert "for 20 decision(s)" in page.click_and_wait("send-button", "send-result")
            page.shot(f"2-{party}-staged")
        page = pages[applicant]
        page.enter(row)
        assert "bytes of ciphertext" in page.click_and_wait("encrypt-button", "encrypt-result")
        page.shot("3-applicant-encrypted")
        page.click_and_wait("send-button", "send-result")
        label = browser.find_element(By.ID, "decision").get_attribute("data-label")
        assert int(label) == plaintext_labels(server, row[None])[0]
        if label == "0":
            assert "points lost" in page.text("send-result")
        page.shot("4-applicant-decision")
        feature = browser.find_element(By.ID, "explain-feature").get_attribute("value")
        explained = page.click_and_wait("explain-button", "explain-result")
        names = requests.get(server.url + "/fhe/info").json()["feature_names"]
        column = names.index(feature)
        if label == "1":
            assert explained.startswith("Already approved")
        elif " gets an approval" in explained:  # the change, applied in the clear, approves
            value = float(explained.split(" = ")[1].split(" ")[0])
            changed = row.copy()
            changed[column] = value
            assert plaintext_labels(server, changed[None])[0] == 1
        else:
            assert explained.startswith("No value of")
        page.shot("5-applicant-explain")

        # a model that needs other keys (other edges: another encoding) replaces the served one
        # under the consoles, as an operator's refit with new settings does: a person reads what
        # happened and what to do
        server.stop()
        settings = {"TREE_ADDITIVE": "1", "TREE_N_BITS": "3", "ADDITIVE_C": "0.01"}
        server = start_anonymizer(model_dir=server.model_dir, port=server.port, **settings)
        assert requests.post(server.url + "/fit", timeout=300).status_code == 201
        page.focus()
        browser.find_element(By.ID, "send-button").click()
        page.wait_for(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "model on the server changed" in page.text("error")
        page.shot("6-applicant-model-changed")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
