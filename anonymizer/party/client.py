"""Party SDK: fetch specs, keep keys, encrypt one party's columns, submit, decrypt, explain.

Only concrete's stock `fhe.Client` (thermometer engine) or concrete-ml's `FHEModelClient`
(concrete-ml engine) touches keys and ciphertexts (see codecs.py); this module adds the HTTP
protocol and the party bookkeeping around them. The command line is cli.py (`anonymizer-party`).
"""

import hmac
import http.client
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import requests
import urllib3

from ..wire import Claim, Decision, ErrorCode, FheInfo, parse_code, percent
from .codecs import codec_for


def _say(message: str) -> None:
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


def normalize_fingerprint(text: str) -> str:
    """A key fingerprint as 64 lower-case hex digits, from any form a person may paste: spaces,
    colons or dashes between groups, upper case, a `sha256:` prefix. ValueError otherwise."""
    digits = "".join(ch for ch in str(text).strip().lower().removeprefix("sha256:") if ch not in " :-\t\n")
    if len(digits) != 64 or any(ch not in "0123456789abcdef" for ch in digits):
        raise ValueError(
            "A key fingerprint is the applicant's 64 hexadecimal digits (SHA-256 of its public key), "
            f"got {text!r}."
        )
    return digits


def readable_fingerprint(fingerprint: str) -> str:
    """A fingerprint in 16 groups of 4 hex digits, to read out and compare by eye."""
    digits = normalize_fingerprint(fingerprint)
    return " ".join(digits[i : i + 4] for i in range(0, 64, 4))


class ModelChanged(ProtocolError):
    """The server was refit to a model that needs new keys: encrypt again (the SDK then makes and
    uploads new keys by itself)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 409, ErrorCode.MODEL_CHANGED)


def _description(response: requests.Response) -> str:
    """The server's description of a refusal (or its body)."""
    return _error_field(response, "description") or response.text


def _code(response: requests.Response) -> ErrorCode | None:
    """The ErrorCode of a refusal's body (wire.py), if it names one this SDK knows."""
    return parse_code(_error_field(response, "code"))


def _error_field(response: requests.Response, field: str) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(field) if isinstance(body, dict) else None


def _resent_if_dropped(send) -> requests.Response:
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


def _check(response: requests.Response, expected: int) -> requests.Response:
    if response.status_code != expected:
        raise ProtocolError(
            f"HTTP {response.status_code}: {_description(response)}", response.status_code, _code(response)
        )
    return response


class PartyClient:
    """One data holder's view of the encrypted scorer at `server_url`."""

    def __init__(
        self,
        server_url: str,
        workdir: Path,
        keys_dir: Path | None = None,
        log=_say,
        token: str | None = None,
        busy_retries: int = 5,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.busy_retries = busy_retries
        self._http = requests.Session()
        if token:  # the server's ANONYMIZER_PARTY_TOKENS holds it
            self._http.headers["Authorization"] = f"Bearer {token}"
        self.workdir = Path(workdir)
        self.keys_dir = Path(keys_dir) if keys_dir else self.workdir / "keys"
        self.log = log
        self._info: FheInfo | None = None
        self._codec = None

    # --- what the server serves -------------------------------------------------------------
    def info(self, refresh: bool = False) -> FheInfo:
        """`GET /fhe/info`: model version, parties, feature names, classes; ProtocolError if the
        server's document lacks what a party needs."""
        if self._info is None or refresh:
            response = _check(self._http.get(f"{self.server_url}/fhe/info", timeout=30), 200)
            try:
                self._info = FheInfo.from_document(response.json())
            except ValueError as error:  # not JSON, or MalformedInfo
                raise ProtocolError(f"The server's /fhe/info is unusable: {error}") from None
            self._codec = None
        return self._info

    @property
    def version(self) -> str:
        return self.info().model_version

    @property
    def key_dir(self) -> Path:
        """Where our keys for the served model live: one directory per keys digest, so a refit
        that keeps the client specs and encoding keeps our keys (and their id on the server)."""
        digest = self.info().keys_digest
        return self.keys_dir / (f"keys-{digest[:32]}" if digest else self.version)

    def codec(self):
        """The served engine's party codec on this version's specs and keys directory."""
        if self._codec is None:
            codec_class = codec_for(self.info())
            specs_dir = self.workdir / "specs" / self.version
            specs_path = specs_dir / codec_class.specs_file
            if not specs_path.exists():
                # every served function's specs: /fhe/info's `functions` name their functions
                specs_url = f"{self.server_url}/fhe/specs?functions=all"
                response = _check(self._http.get(specs_url, timeout=60), 200)
                if response.headers.get("X-Model-Version") != self.version:
                    raise ProtocolError("The model changed while fetching specs; retry.")
                specs_dir.mkdir(parents=True, exist_ok=True)
                specs_path.write_bytes(response.content)
            self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            codec = codec_class(self.info(), specs_path, self.key_dir)
            self._check_pinned(codec)
            self._codec = codec
        return self._codec

    def _check_pinned(self, codec) -> None:
        """A joined public key loaded from disk must still be the one pinned at `join`."""
        id_file = self.key_dir / "server-key-id.json"
        if not id_file.exists():
            return
        joined = json.loads(id_file.read_text())
        if not joined.get("joined"):
            return
        pinned, held = joined.get("fingerprint"), codec.fingerprint()
        if pinned is None or held is None or held != pinned:
            raise KeyMismatch(
                f"The public key in {self.key_dir} is not the one pinned when joining key "
                f"{joined.get('key_id')} (or was joined without a fingerprint): join again with the "
                "applicant's key id and fingerprint."
            )

    # --- keys -------------------------------------------------------------------------------
    def keygen(self) -> None:
        """Generate the shared secret and evaluation keys once per keys digest (0600 files)."""
        key_dir = self.key_dir
        fresh = not self._keys_made()
        started = time.perf_counter()
        if fresh:
            self.log(f"keygen for model {self.version} ...")
        self.codec().keygen()
        for path in [key_dir, *key_dir.rglob("*")]:
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
        if fresh:
            self.log(f"keygen done in {time.perf_counter() - started:.1f} s (keys in {key_dir})")

    def _keys_made(self) -> bool:
        """Whether our keys for the served keys digest are on disk (beside their server id)."""
        key_dir = self.key_dir
        return key_dir.exists() and any(p.name != "server-key-id.json" for p in key_dir.iterdir())

    def _keyed_codec(self):
        """The codec with our secret keys loaded: a codec made after a refit (same keys digest)
        starts without them. ValueError if we never made keys for this digest: a result is
        never decrypted under freshly generated keys."""
        codec = self.codec()
        if codec.needs_secret_to_encrypt:
            if not self._keys_made():
                raise ValueError(f"No keys in {self.key_dir}: nothing encrypted by us can be decrypted.")
            codec.keygen()  # loads the saved keys
        return codec

    def key_id(self) -> str:
        """The id of our evaluation key on the server, uploading it first if needed (under
        Paillier: the applicant's public key; a co-party `join`s the applicant's key id instead)."""
        id_file = self.key_dir / "server-key-id.json"
        if id_file.exists():
            return json.loads(id_file.read_text())["key_id"]
        self.keygen()
        evaluation_keys = self.codec().evaluation_keys()
        self.log(f"uploading evaluation keys ({len(evaluation_keys) / 1e6:.1f} MB) ...")
        started = time.perf_counter()

        def upload() -> requests.Response:
            params = self.claim.params()
            return self._http.post(
                f"{self.server_url}/fhe/keys", data=evaluation_keys, params=params, timeout=600
            )

        response = self._patiently(upload)
        if _code(response) == ErrorCode.MODEL_CHANGED:
            self._follow_refit(response)
            response = self._patiently(upload)
        answer = _check(response, 201).json()
        fingerprint = self.codec().fingerprint()
        pin = f", fingerprint {readable_fingerprint(fingerprint)}" if fingerprint else ""
        self.log(f"uploaded in {time.perf_counter() - started:.1f} s: key_id {answer['key_id']}{pin}")
        id_file.write_text(json.dumps(answer))
        os.chmod(id_file, 0o600)
        return answer["key_id"]

    def known_key_id(self) -> str | None:
        """Our key id on the server if one was uploaded or joined (nothing is made or sent)."""
        id_file = self.key_dir / "server-key-id.json"
        return json.loads(id_file.read_text())["key_id"] if id_file.exists() else None

    def is_applicant(self, party: str) -> bool:
        """Whether `party` is the layout's first party: the one that makes the keys and decides."""
        return party == self.info().applicant

    def key_bytes(self) -> int:
        """Bytes of what we upload: the evaluation key (TFHE) or the public key (Paillier)."""
        return len(self.codec().evaluation_keys())

    def key_fingerprint(self) -> str | None:
        """The fingerprint (SHA-256 hex of the wire format) of the Paillier public key we hold:
        the applicant's own, which it gives its co-parties out of band with the key id, or the
        one a co-party joined. None under TFHE or before a key is made (nothing is made here)."""
        return self.codec().fingerprint()

    def join(self, key_id: str, fingerprint: str) -> None:
        """A co-party under Paillier: fetch the applicant's public key `key_id` and encrypt under
        it from now on (no secret is made or held here). `fingerprint`: the applicant's
        `key_fingerprint()`, given out of band with the key id; a served key with another
        fingerprint (a server that substituted its own key) raises KeyMismatch and nothing of
        it is kept."""
        pinned = normalize_fingerprint(fingerprint)
        codec_class = codec_for(self.info())
        if not hasattr(codec_class, "served_fingerprint"):
            raise ValueError(
                "Joining a key is for ANONYMIZER_ENCRYPTION=paillier; under TFHE share the keys dir."
            )
        response = _check(self._http.get(f"{self.server_url}/fhe/keys/{key_id}", timeout=60), 200)
        if response.headers.get("X-Model-Version") != self.version:
            raise ProtocolError(
                "The key was made for another model version; ask the applicant for a new one."
            )
        served = codec_class.served_fingerprint(response.content)
        if not hmac.compare_digest(served, pinned):
            raise KeyMismatch(
                f"The server served key {key_id} with fingerprint {readable_fingerprint(served)}, not the "
                f"applicant's {readable_fingerprint(pinned)}: it is not the applicant's key (a server "
                "substituting its own could read what is encrypted under it). Nothing was encrypted "
                "or kept; check the fingerprint with the applicant, and do not use this server if it "
                "was read out right."
            )
        id_file = self.key_dir / "server-key-id.json"
        if self._codec is None:
            id_file.unlink(missing_ok=True)  # an older join's pin must not refuse the new key
        self.codec().use_public_key(response.content)
        record = {"key_id": key_id, "model_version": self.version, "joined": True, "fingerprint": served}
        id_file.write_text(json.dumps(record))

    def _joined(self) -> bool:
        id_file = self.key_dir / "server-key-id.json"
        return id_file.exists() and bool(json.loads(id_file.read_text()).get("joined"))

    # --- encryption -------------------------------------------------------------------------
    def party_row(self, party: str, values) -> np.ndarray:
        """A full-width row holding `values` in `party`'s columns (zeros elsewhere).

        `values`: a list in the party's column order, or a dict keyed by feature name or index.
        """
        info = self.info()
        columns = info.parties[party]
        if isinstance(values, dict):
            names = info.feature_names or []
            by_column = {}
            for key, value in values.items():
                column = names.index(key) if key in names else int(key)
                if column not in columns:
                    raise ValueError(f"Column {key!r} does not belong to {party!r}.")
                by_column[column] = float(value)
            missing = [c for c in columns if c not in by_column]
            if missing:
                raise ValueError(f"{party!r} must give all its columns; missing {missing}.")
            values = [by_column[c] for c in columns]
        if len(values) != len(columns):
            raise ValueError(f"{party!r} owns {len(columns)} columns, got {len(values)} values.")
        row = np.zeros((1, info.n_features))
        row[0, columns] = np.asarray(values, dtype=np.float64)
        return row

    def encrypt(self, party: str, values) -> bytes:
        """Encode and encrypt only `party`'s columns, as circuit argument i (i = its position)."""
        if self.codec().needs_secret_to_encrypt:
            self.keygen()
        elif self.codec().public_key is None:  # Paillier, the applicant: its own key pair
            self.key_id()
        # Paillier proofs are bound to the key id (TFHE codecs ignore it)
        return self.codec().encrypt(party, self.party_row(party, values), key_id=self.known_key_id())

    # --- submitting -------------------------------------------------------------------------
    def _with_key(self, send) -> requests.Response:
        """`send(key_id)`; if the server evicted our key (404), upload it again and retry once; if
        it was refit (409), follow the new model: same keys digest, retry; else ModelChanged."""
        response = send(self.key_id())
        if _code(response) == ErrorCode.MODEL_CHANGED:
            self._follow_refit(response)
            response = send(self.key_id())
        if _code(response) == ErrorCode.UNKNOWN_KEY:
            if self._joined():
                raise ProtocolError(
                    "The applicant's key is gone from the server; ask the applicant for its new key id."
                )
            self.log("the server no longer has our evaluation key; uploading it again")
            (self.key_dir / "server-key-id.json").unlink(missing_ok=True)
            if not self.codec().needs_secret_to_encrypt:  # Paillier: the proofs name the old key id
                raise ModelChanged(f"Our key is uploaded again as {self.key_id()}: encrypt again.")
            response = send(self.key_id())
        return response

    @property
    def claim(self) -> Claim:
        """What our keys and ciphertexts are made for: the served version and its keys digest."""
        return Claim(self.version, self.info().keys_digest)

    def _follow_refit(self, conflict: requests.Response) -> None:
        """After a 409: read the served model; ModelChanged unless it accepts our keys."""
        before = self.info().keys_digest
        after = self.info(refresh=True).keys_digest
        if before is None or before != after:
            detail = _description(conflict)
            raise ModelChanged(
                f"HTTP 409: {detail} The server now serves model {self.version}, which needs new "
                "keys: encrypt again (new keys are made and uploaded by themselves)."
            )
        self.log(f"the server was refit to model {self.version}; our keys still fit it")

    def _patiently(self, send) -> requests.Response:
        """`send()`, again after Retry-After while the server's encrypted queue is full (429) or
        its executor restarts (503), at most `busy_retries` times."""
        for _ in range(self.busy_retries):
            response = _resent_if_dropped(send)
            if _code(response) == ErrorCode.BUDGET_SPENT:  # not busy: waiting an hour helps no one
                return response
            wait = _retry_after(response) if response.status_code in (429, 503) else None
            if wait is None:
                return response
            self.log(f"server busy ({response.status_code}); retrying in {wait:.0f} s")
            time.sleep(wait)
        return _resent_if_dropped(send)

    def stage(self, party: str, ciphertext: bytes, uses: int = 1) -> None:
        """Leave our ciphertext on the server for the next `uses` predictions with the key (more
        than one lets the applicant's `explain` try other values of its own features with ours)."""
        response = self._with_key(
            lambda key_id: _resent_if_dropped(
                lambda: self._http.put(
                    f"{self.server_url}/fhe/keys/{key_id}/inputs/{party}",
                    data=ciphertext,
                    params={**self.claim.params(), "uses": uses},
                    timeout=60,
                )
            )
        )
        _check(response, 201)

    def predict(self, ciphertexts: dict[str, bytes], reasons: bool = False) -> tuple[bytes, float]:
        """Run the circuit on these parties' ciphertexts plus the staged ones; encrypted result
        (with `reasons`: the decision and each column's points lost, see `reasons`)."""

        def send(key_id: str) -> requests.Response:
            # (None, text) parts keep the body multipart even when every party input is staged
            parts = {"key_id": (None, key_id), **{k: (None, v) for k, v in self.claim.params().items()}}
            if reasons:
                parts["reasons"] = (None, "1")
            for party, data in ciphertexts.items():
                parts[party] = (party, data, "application/octet-stream")
            return self._http.post(f"{self.server_url}/predict", files=parts, timeout=600)

        self.log("running the encrypted prediction ...")
        response = _check(self._with_key(lambda key_id: self._patiently(lambda: send(key_id))), 201)
        seconds = float(response.headers.get("X-FHE-Execution-Seconds", "nan"))  # not sent under Paillier
        if seconds == seconds:
            self.log(f"FHE execution on the server took {seconds:.2f} s")
        return response.content, seconds

    def decrypt(self, encrypted_result: bytes) -> Decision:
        """The decided class and its share of the votes or probability (None under Paillier,
        whose blinded answer carries the decision only) from the encrypted result."""
        probabilities = self._keyed_codec().decrypt(encrypted_result)
        best = int(np.argmax(probabilities))
        if self.info().blinded:
            return Decision(self.info().classes[best], None)
        return Decision(self.info().classes[best], float(probabilities[best]))

    def score(self, values_by_party: dict) -> Decision:
        """Encrypt every given party's values, predict (staged parts fill the rest), decrypt."""
        return self.decrypt(self._predict_values(values_by_party)[0])

    def _predict_values(self, values_by_party: dict, reasons: bool = False) -> tuple[bytes, float]:
        """Encrypt and predict; once more with new keys if the server was refit meanwhile."""

        def encrypted_predict() -> tuple[bytes, float]:
            return self.predict({p: self.encrypt(p, v) for p, v in values_by_party.items()}, reasons)

        try:
            return encrypted_predict()
        except ModelChanged as change:
            self.log(f"{change} Encrypting again.")
            try:
                return encrypted_predict()
            except ProtocolError as error:
                if error.code != ErrorCode.MISSING_INPUT:
                    raise
                raise ModelChanged(  # what they staged was for the old keys
                    f"{change} New keys are uploaded (key id {self.known_key_id()}): the co-parties "
                    "must encrypt and stage again for them."
                ) from error

    @property
    def gives_reasons(self) -> bool:
        """Whether the server gives reason codes for the served model (`/fhe/info`)."""
        return "reasons" in self.info().functions

    def reasons(self, values_by_party: dict, top: int | None = 4) -> dict:
        """The decision and the `top` reasons it lost points on, from one encrypted prediction.

        A reason is a column whose bin scores below that column's best bin (toward the last
        class, the approval): `points_lost` in the model's integer points, `log_odds_lost` in
        log-odds; largest first, as a scorecard's adverse-action notice lists them. Staged
        parts fill in the parties not given here.
        """
        if not self.gives_reasons:
            raise ValueError(
                "The server gives no reason codes for this model (two-class additive models only)."
            )
        encrypted, _ = self._predict_values(values_by_party, True)  # makes our keys if need be
        shares, lost, margin = self._keyed_codec().decrypt_reasons(encrypted)
        info = self.info()
        best = int(np.argmax(shares))
        names = info.feature_names or []
        owner = {c: party for party, columns in info.parties.items() for c in columns}
        scale = info.decoding["score_scale"]
        found = [
            {
                "feature": names[column] if column < len(names) else column,
                "column": column,
                "party": owner[column],
                "points_lost": int(points),
                "log_odds_lost": round(float(points) / scale, 4),
                # the score is additive: this column alone at its best bin gains exactly its points
                "approves_alone": margin <= 0 < margin + int(points),
            }
            for column, points in zip(info.reasons["columns"], lost)
            if points > 0
        ]
        found.sort(key=lambda reason: (-reason["points_lost"], reason["column"]))
        return {
            "decision": info.classes[best],
            "probability": float(shares[best]),
            "margin_points": margin,
            "reasons": found[:top] if top is not None else found,
        }

    def explain(
        self,
        values_by_party: dict,
        party: str | None = None,
        feature=None,
        approved_label=None,
        max_tries: int = 64,
    ) -> dict:
        """Smallest change of one feature of `party` that turns a denial into approval.

        Where the server gives reason codes, the first prediction asks for them, the answer lists
        them, and without a `feature` the top reason's feature is the one changed. Tries one
        value of each of the feature's other encoding levels, nearest first, each through an
        encrypted prediction, and stops at the first approval.
        """
        info = self.info()
        approved_label = info.classes[-1] if approved_label is None else approved_label
        names = info.feature_names or []
        if self.gives_reasons:
            first = self.reasons(values_by_party)
            label, probability = first["decision"], first["probability"]
            reasons = {"reasons": first["reasons"]}
        else:
            label, probability = self.score(values_by_party)
            reasons = {}
        if feature is None:
            if not reasons.get("reasons"):
                raise ValueError("Name the feature to change: the server gives no reasons to choose one.")
            feature, party = reasons["reasons"][0]["feature"], reasons["reasons"][0]["party"]
        column = names.index(feature) if feature in names else int(feature)
        party = party or next(p for p, columns in info.parties.items() if column in columns)
        result = {"feature": feature, "decision": label, "probability": probability, **reasons}
        if label == approved_label:
            return {**result, "already_approved": True}
        if party not in values_by_party:
            raise ValueError(f"Give {party!r}'s values to change {feature!r}.")
        row = self.party_row(party, values_by_party[party])
        current = row[0, column]
        candidates = self.codec().other_levels(column, current)
        candidates.sort(key=lambda v: abs(v - current))
        for tries, value in enumerate(candidates[:max_tries], start=1):
            changed = dict(values_by_party)
            party_values = row[0, info.parties[party]].copy()
            party_values[info.parties[party].index(column)] = value
            changed[party] = party_values.tolist()
            label, probability = self.score(changed)
            self.log(f"  {feature} = {value:g}: {label} (probability {percent(probability)})")
            if label == approved_label:
                return {
                    **result,
                    "value": float(value),
                    "change": float(value - current),
                    "probability_after": probability,
                    "encrypted_predictions": tries + 1,
                }
        return {**result, "value": None, "encrypted_predictions": len(candidates[:max_tries]) + 1}


def _retry_after(response: requests.Response) -> float | None:
    """The Retry-After seconds of a response (capped at 30), None without a usable one."""
    try:
        return min(float(response.headers["Retry-After"]), 30.0)
    except (KeyError, ValueError):
        return None
