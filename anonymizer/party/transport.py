"""The party SDK's transport: one HTTP session to the scoring server, the errors it raises, a
resend when a kept-alive connection was dropped, and patient retries while the server is busy.
It knows HTTP and the wire contract's error codes, nothing of keys or models."""

import http.client
import sys
import time

import requests
import urllib3

from ..wire import ErrorCode, parse_code

MAX_RETRY_AFTER = 30.0  # seconds: a longer Retry-After is waited this long, then asked again


def say(message: str) -> None:
    """The SDK's default log: a line on stderr."""
    print(message, file=sys.stderr, flush=True)


class ProtocolError(RuntimeError):
    """The server refused a request; the message carries its status and description, `status`
    and `code` the HTTP status and the error body's ErrorCode (None where no answer caused it,
    or the server named a code this SDK does not know)."""

    def __init__(self, message: str, status: int | None = None, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class KeyMismatch(ProtocolError, ValueError):
    """The public key the server served (or the one on disk) is not the one the applicant pinned
    by its fingerprint: nothing is encrypted under it, nothing of it is kept."""


class ModelChanged(ProtocolError):
    """The server was refit to a model that needs new keys: encrypt again (the SDK then makes and
    uploads new keys by itself)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 409, ErrorCode.MODEL_CHANGED)


def description(response: requests.Response) -> str:
    """The server's description of a refusal (or its body)."""
    return _error_field(response, "description") or response.text


def code(response: requests.Response) -> ErrorCode | None:
    """The ErrorCode of a refusal's body (wire.py), if it names one this SDK knows."""
    return parse_code(_error_field(response, "code"))


def _error_field(response: requests.Response, field: str) -> str | None:
    if "json" not in response.headers.get("Content-Type", ""):
        return None  # an answer's ciphertext: not parsed (requests would guess its charset first)
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(field) if isinstance(body, dict) else None


def check(response: requests.Response, expected: int) -> requests.Response:
    """`response` if it has the `expected` status, else ProtocolError with the server's code."""
    if response.status_code != expected:
        raise ProtocolError(
            f"HTTP {response.status_code}: {description(response)}", response.status_code, code(response)
        )
    return response


def resent_if_dropped(send) -> requests.Response:
    """`send()`, once more if the server closed the connection without answering: mostly a
    kept-alive connection its idle timeout (gunicorn: 2 s) closed just as we reused it after
    local work (a keygen). A worker that died mid-request looks the same, so only one resend:
    at worst it is refused (e.g. 400 for staged inputs that request consumed)."""
    try:
        return send()
    except requests.ConnectionError as error:
        cause = error.args[0] if error.args else None
        dropped = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
        reason = (
            cause.args[-1] if isinstance(cause, urllib3.exceptions.ProtocolError) and cause.args else None
        )
        if not isinstance(reason, dropped):
            raise
        return send()


def retry_after(response: requests.Response) -> float | None:
    """The Retry-After seconds of a response (capped), None without a usable one."""
    try:
        return min(float(response.headers["Retry-After"]), MAX_RETRY_AFTER)
    except (KeyError, ValueError):
        return None


class Transport:
    """The HTTP session to `server_url` (with the party's bearer token, if any)."""

    def __init__(self, server_url: str, token: str | None = None, busy_retries: int = 5, log=say) -> None:
        self.server_url = server_url.rstrip("/")
        self.busy_retries = busy_retries
        self.log = log
        self.session = requests.Session()
        if token:  # the server's ANONYMIZER_PARTY_TOKENS holds it
            self.session.headers["Authorization"] = f"Bearer {token}"

    def url(self, path: str) -> str:
        """The server's address of `path` (starting with /)."""
        return self.server_url + path

    def get(self, path: str, expected: int = 200, timeout: float = 60) -> requests.Response:
        """`GET path`, checked against `expected` (ProtocolError otherwise)."""
        return check(resent_if_dropped(lambda: self.session.get(self.url(path), timeout=timeout)), expected)

    def patiently(self, send) -> requests.Response:
        """`send()`, again after Retry-After while the server is busy (429) or its executor
        restarts (503), at most `busy_retries` times; a spent decision budget is returned at once
        (waiting until the window ends helps no one)."""
        for _ in range(self.busy_retries):
            response = resent_if_dropped(send)
            if code(response) == ErrorCode.BUDGET_SPENT:
                return response
            wait = retry_after(response) if response.status_code in (429, 503) else None
            if wait is None:
                return response
            self.log(f"server busy ({response.status_code}); retrying in {wait:.0f} s")
            time.sleep(wait)
        return resent_if_dropped(send)
