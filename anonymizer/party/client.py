"""Party SDK: the protocol of one data holder — read the served model, make or join keys,
encrypt its own columns, stage them or predict, decrypt, and follow refits.

Its parts: `transport` (HTTP, errors, resends, waiting while the server is busy), `keystore` (the
key files), the codecs (`codecs.py`: only concrete's stock `fhe.Client`, concrete-ml's
`FHEModelClient` or python-paillier touch keys and ciphertexts) and `explanations` (reasons and
the counterfactual search). The command line is cli.py (`anonymizer-party`).
"""

import hmac
import time
from pathlib import Path

import numpy as np
import requests

from ..wire import Claim, Decision, ErrorCode, FheInfo, explained_column, rows_function, rows_in
from . import explanations
from .codecs import codec_for
from .keystore import KeyRecord, KeyStore
from .transport import (
    KeyMismatch,
    ModelChanged,
    ProtocolError,
    Transport,
    check,
    code,
    description,
    resent_if_dropped,
    say,
)

__all__ = ["KeyMismatch", "ModelChanged", "PartyClient", "ProtocolError", "readable_fingerprint"]


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


class PartyClient:
    """One data holder's view of the encrypted scorer at `server_url`."""

    def __init__(
        self,
        server_url: str,
        workdir: Path,
        keys_dir: Path | None = None,
        log=say,
        token: str | None = None,
        busy_retries: int = 5,
    ) -> None:
        self.transport = Transport(server_url, token, busy_retries, log)
        self.workdir = Path(workdir)
        self.keys = KeyStore(Path(keys_dir) if keys_dir else self.workdir / "keys")
        self._info: FheInfo | None = None
        self._codec = None

    @property
    def server_url(self) -> str:
        """The scoring server's base URL (settable: the same server at a new address)."""
        return self.transport.server_url

    @server_url.setter
    def server_url(self, url: str) -> None:
        self.transport.server_url = url.rstrip("/")

    @property
    def log(self):
        """Where progress lines go (the console shows them)."""
        return self.transport.log

    @log.setter
    def log(self, log) -> None:
        self.transport.log = log

    # --- what the server serves -------------------------------------------------------------
    def info(self, refresh: bool = False) -> FheInfo:
        """`GET /fhe/info`: model version, parties, feature names, classes; ProtocolError if the
        server's document lacks what a party needs."""
        if self._info is None or refresh:
            response = self.transport.get("/fhe/info", timeout=30)
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
    def keys_dir(self) -> Path:
        """The root of our key directories (`keys_dir`, or `workdir`/keys)."""
        return self.keys.root

    @property
    def key_dir(self) -> Path:
        """Where our keys for the served model live (one directory per keys digest)."""
        return self.keys.directory(self.info())

    @property
    def claim(self) -> Claim:
        """What our keys and ciphertexts are made for: the served version and its keys digest."""
        return Claim(self.version, self.info().keys_digest)

    def codec(self):
        """The served engine's party codec on this version's specs and keys directory."""
        if self._codec is None:
            codec_class = codec_for(self.info())
            specs_path = self._specs(codec_class.specs_file)
            codec = codec_class(self.info(), specs_path, self.keys.ready(self.info()))
            self._check_pinned(codec)
            self._codec = codec
        return self._codec

    def _specs(self, file_name: str) -> Path:
        """The served version's client specs (every served function's), fetched once."""
        specs_dir = self.workdir / "specs" / self.version
        specs_path = specs_dir / file_name
        if not specs_path.exists():
            response = self.transport.get("/fhe/specs?functions=all")
            if response.headers.get("X-Model-Version") != self.version:
                raise ProtocolError("The model changed while fetching specs; retry.")
            specs_dir.mkdir(parents=True, exist_ok=True)
            specs_path.write_bytes(response.content)
        return specs_path

    def _check_pinned(self, codec) -> None:
        """A joined public key loaded from disk must still be the one pinned at `join`."""
        record = self.keys.record(self.info())
        if record is None or not record.joined:
            return
        held = codec.fingerprint()
        if record.fingerprint is None or held is None or held != record.fingerprint:
            raise KeyMismatch(
                f"The public key in {self.key_dir} is not the one pinned when joining key "
                f"{record.key_id} (or was joined without a fingerprint): join again with the "
                "applicant's key id and fingerprint."
            )

    # --- keys -------------------------------------------------------------------------------
    def keygen(self) -> None:
        """Generate the shared secret and evaluation keys once per keys digest (0600 files)."""
        fresh = not self.keys.made(self.info())
        started = time.perf_counter()
        if fresh:
            self.log(f"keygen for model {self.version} ...")
        self.codec().keygen()
        self.keys.protect(self.info())
        if fresh:
            self.log(f"keygen done in {time.perf_counter() - started:.1f} s (keys in {self.key_dir})")

    def keyed_codec(self):
        """The codec with our secret keys loaded: a codec made after a refit (same keys digest)
        starts without them. ValueError if we never made keys for this digest: a result is
        never decrypted under freshly generated keys."""
        codec = self.codec()
        if codec.needs_secret_to_encrypt:
            if not self.keys.made(self.info()):
                raise ValueError(f"No keys in {self.key_dir}: nothing encrypted by us can be decrypted.")
            codec.keygen()  # loads the saved keys
        return codec

    def key_id(self) -> str:
        """The id of our evaluation key on the server, uploading it first if needed (under
        Paillier: the applicant's public key; a co-party `join`s the applicant's key id instead)."""
        record = self.keys.record(self.info())
        if record is not None:
            return record.key_id
        self.keygen()
        evaluation_keys = self.codec().evaluation_keys()
        self.log(f"uploading evaluation keys ({len(evaluation_keys) / 1e6:.1f} MB) ...")
        started = time.perf_counter()

        def upload() -> requests.Response:
            url, params = self.transport.url("/fhe/keys"), self.claim.params()
            return self.transport.session.post(url, data=evaluation_keys, params=params, timeout=600)

        response = self.transport.patiently(upload)
        if code(response) == ErrorCode.MODEL_CHANGED:
            self._follow_refit(response)
            response = self.transport.patiently(upload)
        answer = check(response, 201).json()
        fingerprint = self.codec().fingerprint()
        pin = f", fingerprint {readable_fingerprint(fingerprint)}" if fingerprint else ""
        self.log(f"uploaded in {time.perf_counter() - started:.1f} s: key_id {answer['key_id']}{pin}")
        self.keys.keep(self.info(), KeyRecord(answer["key_id"], answer.get("model_version")))
        return answer["key_id"]

    def known_key_id(self) -> str | None:
        """Our key id on the server if one was uploaded or joined (nothing is made or sent)."""
        record = self.keys.record(self.info())
        return record.key_id if record else None

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
        if codec_class.needs_secret_to_encrypt:
            raise ValueError(
                "Joining a key is for ANONYMIZER_ENCRYPTION=paillier; under TFHE share the keys dir."
            )
        response = self.transport.get(f"/fhe/keys/{key_id}")
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
        if self._codec is None:
            self.keys.forget(self.info())  # an older join's pin must not refuse the new key
        self.codec().use_public_key(response.content)
        self.keys.keep(self.info(), KeyRecord(key_id, self.version, joined=True, fingerprint=served))

    def _joined(self) -> bool:
        record = self.keys.record(self.info())
        return record is not None and record.joined

    # --- encryption -------------------------------------------------------------------------
    def party_row(self, party: str, values) -> np.ndarray:
        """A full-width row holding `values` in `party`'s columns (zeros elsewhere).

        `values`: a list in the party's column order, or a dict keyed by feature name or index.
        """
        info = self.info()
        columns = info.parties[party]
        if isinstance(values, dict):
            values = _in_column_order(values, columns, info.feature_names or [], party)
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

    def encrypt_rows(self, party: str, rows: list, function: str) -> bytes:
        """Encode and encrypt several rows of `party`'s columns as one argument of `function`
        (`rows/<count>`, count = len(rows): the applicant's argument of several rows)."""
        self.keygen()  # only the TFHE module serves rows/<count>
        stacked = np.concatenate([self.party_row(party, values) for values in rows])
        return self.codec().encrypt(party, stacked, function=function)

    # --- submitting -------------------------------------------------------------------------
    def _with_key(self, send) -> requests.Response:
        """`send(key_id)`; if the server evicted our key (404), upload it again and retry once; if
        it was refit (409), follow the new model: same keys digest, retry; else ModelChanged."""
        response = send(self.key_id())
        if code(response) == ErrorCode.MODEL_CHANGED:
            self._follow_refit(response)
            response = send(self.key_id())
        if code(response) == ErrorCode.UNKNOWN_KEY:
            if self._joined():
                raise ProtocolError(
                    "The applicant's key is gone from the server; ask the applicant for its new key id."
                )
            self.log("the server no longer has our evaluation key; uploading it again")
            self.keys.forget(self.info())
            if not self.codec().needs_secret_to_encrypt:  # Paillier: the proofs name the old key id
                raise ModelChanged(f"Our key is uploaded again as {self.key_id()}: encrypt again.")
            response = send(self.key_id())
        return response

    def _follow_refit(self, conflict: requests.Response) -> None:
        """After a 409: read the served model; ModelChanged unless it accepts our keys."""
        before = self.info().keys_digest
        after = self.info(refresh=True).keys_digest
        if before is None or before != after:
            raise ModelChanged(
                f"HTTP 409: {description(conflict)} The server now serves model {self.version}, which "
                "needs new keys: encrypt again (new keys are made and uploaded by themselves)."
            )
        self.log(f"the server was refit to model {self.version}; our keys still fit it")

    def stage(self, party: str, ciphertext: bytes, uses: int = 1) -> None:
        """Leave our ciphertext on the server for the next `uses` predictions with the key (more
        than one lets the applicant's `explain` try other values of its own features with ours)."""

        def put(key_id: str) -> requests.Response:
            url = self.transport.url(f"/fhe/keys/{key_id}/inputs/{party}")
            params = {**self.claim.params(), "uses": uses}
            return resent_if_dropped(
                lambda: self.transport.session.put(url, data=ciphertext, params=params, timeout=60)
            )

        check(self._with_key(put), 201)

    def predict(self, ciphertexts: dict[str, bytes], function: str = "decide") -> tuple[bytes, float]:
        """Run the served `function` on these parties' ciphertexts plus the staged ones; the
        encrypted result. `decide`; `reasons`: the decision and each column's points lost (see
        `reasons`); `explain/<column>` (`wire.explain_function`): the decision at every level of
        that feature, one call counted as that many decisions; `rows/<count>`
        (`wire.rows_function`): the decision for each of the applicant's `count` rows."""
        column = explained_column(function)

        def send(key_id: str) -> requests.Response:
            # (None, text) parts keep the body multipart even when every party input is staged
            parts = {"key_id": (None, key_id), **{k: (None, v) for k, v in self.claim.params().items()}}
            if function == "reasons":
                parts["reasons"] = (None, "1")
            elif column is not None:
                parts["explain"] = (None, str(column))
            elif rows_in(function):
                parts["rows"] = (None, str(rows_in(function)))
            for party, data in ciphertexts.items():
                parts[party] = (party, data, "application/octet-stream")
            return self.transport.session.post(self.transport.url("/predict"), files=parts, timeout=600)

        self.log("running the encrypted prediction ...")
        response = check(self._with_key(lambda key_id: self.transport.patiently(lambda: send(key_id))), 201)
        seconds = float(response.headers.get("X-FHE-Execution-Seconds", "nan"))  # not sent under Paillier
        if seconds == seconds:
            self.log(f"FHE execution on the server took {seconds:.2f} s")
        return response.content, seconds

    def decrypt(self, encrypted_result: bytes) -> Decision:
        """The decided class and its share of the votes or probability (None under Paillier,
        whose blinded answer carries the decision only) from the encrypted result."""
        return self._decision(self.keyed_codec().decrypt(encrypted_result))

    def _decision(self, probabilities: np.ndarray) -> Decision:
        best = int(np.argmax(probabilities))
        label = self.info().classes[best]
        return Decision(label, None if self.info().blinded else float(probabilities[best]))

    def score(self, values_by_party: dict) -> Decision:
        """Encrypt every given party's values, predict (staged parts fill the rest), decrypt."""
        return self.decrypt(self.predict_values(values_by_party)[0])

    def predict_values(self, values_by_party: dict, function: str = "decide") -> tuple[bytes, float]:
        """Encrypt and predict `function`; once more with new keys if the server was refit meanwhile."""
        return self._again_if_refit(
            lambda: self.predict({p: self.encrypt(p, v) for p, v in values_by_party.items()}, function)
        )

    def score_rows(self, applicant_rows: list, others: dict | None = None) -> list[Decision]:
        """A decision for each of several rows of the applicant's columns, the other parties'
        columns fixed (`others`: their values; else staged by them for at least as many decisions
        as each call holds rows). Up to the largest offered count per encrypted call
        (`rows/<count>`, padded to the next offered count with the last row, which the server
        counts too); one call per row where the server offers none (Paillier, concrete-ml)."""
        applicant, others = self.info().applicant, others or {}
        counts = sorted(n for f in self.info().functions if (n := rows_in(f)))
        if not counts:
            return [self.score({applicant: row, **others}) for row in applicant_rows]
        decisions: list[Decision] = []
        for start in range(0, len(applicant_rows), counts[-1]):
            chunk = list(applicant_rows[start : start + counts[-1]])
            count = next(n for n in counts if n >= len(chunk))
            padded = chunk + [chunk[-1]] * (count - len(chunk))
            decisions += self._score_rows_in_one_call(padded, others)[: len(chunk)]
        return decisions

    def _score_rows_in_one_call(self, applicant_rows: list, others: dict) -> list[Decision]:
        """The decisions of `rows/<len(applicant_rows)>`."""
        applicant, function = self.info().applicant, rows_function(len(applicant_rows))

        def encrypted_predict() -> tuple[bytes, float]:
            ciphertexts = {p: self.encrypt(p, v) for p, v in others.items()}
            ciphertexts[applicant] = self.encrypt_rows(applicant, applicant_rows, function)
            return self.predict(ciphertexts, function)

        result, _ = self._again_if_refit(encrypted_predict)
        shares = self.keyed_codec().decrypt_batch(result, function, len(applicant_rows))
        return [self._decision(row) for row in shares]

    def _again_if_refit(self, encrypted_predict):
        """`encrypted_predict()`; once more if the server was refit to a model that needs new keys
        (ModelChanged if what co-parties staged was for the old ones)."""
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

    # --- explanations (explanations.py) ---------------------------------------------------------
    @property
    def gives_reasons(self) -> bool:
        """Whether the server gives reason codes for the served model (`/fhe/info`)."""
        return "reasons" in self.info().functions

    def reasons(self, values_by_party: dict, top: int | None = 4) -> dict:
        """The decision and the `top` reasons it lost points on (explanations.reasons)."""
        return explanations.reasons(self, values_by_party, top)

    def explain(
        self,
        values_by_party: dict,
        party: str | None = None,
        feature=None,
        approved_label=None,
        max_tries: int = 64,
    ) -> dict:
        """The smallest change of one feature that turns a denial into approval (explanations.explain)."""
        return explanations.explain(self, values_by_party, party, feature, approved_label, max_tries)


def _in_column_order(values: dict, columns: list[int], names: list[str], party: str) -> list[float]:
    """`{feature name or column index: value}` as a list in the party's column order."""
    by_column = {}
    for key, value in values.items():
        column = names.index(key) if key in names else int(key)
        if column not in columns:
            raise ValueError(f"Column {key!r} does not belong to {party!r}.")
        by_column[column] = float(value)
    missing = [c for c in columns if c not in by_column]
    if missing:
        raise ValueError(f"{party!r} must give all its columns; missing {missing}.")
    return [by_column[c] for c in columns]
