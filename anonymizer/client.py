"""Party SDK and CLI: fetch specs, keep keys, encrypt one party's columns, submit, decrypt, explain.

Run `python -m anonymizer.client --help`. Only concrete's stock `fhe.Client` (thermometer engine)
or concrete-ml's `FHEModelClient` (concrete-ml engine) touches keys and ciphertexts; this module
adds the encoding, the HTTP protocol and the party bookkeeping around them.
"""

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import requests

from .encoding import ThresholdEncoding
from .leafsum import decode_shares


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ProtocolError(RuntimeError):
    """The server refused a request; the message carries its status and description."""


def _check(response: requests.Response, expected: int) -> requests.Response:
    if response.status_code != expected:
        try:
            detail = response.json().get("description") or response.text
        except ValueError:
            detail = response.text
        raise ProtocolError(f"HTTP {response.status_code}: {detail}")
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
        self._info: dict | None = None
        self._codec = None

    # --- what the server serves -------------------------------------------------------------
    def info(self, refresh: bool = False) -> dict:
        """`GET /fhe/info`: model version, parties, feature names, classes."""
        if self._info is None or refresh:
            self._info = _check(self._http.get(f"{self.server_url}/fhe/info", timeout=30), 200).json()
            self._codec = None
        return self._info

    @property
    def version(self) -> str:
        return self.info()["model_version"]

    def codec(self) -> "ThermometerCodec | ConcreteMLCodec":
        """The served engine's client on this version's specs and keys directory."""
        if self._codec is None:
            specs_dir = self.workdir / "specs" / self.version
            specs_path = specs_dir / SPECS_FILES.get(self.info().get("engine"), "client.zip")
            if not specs_path.exists():
                response = _check(self._http.get(f"{self.server_url}/fhe/specs", timeout=60), 200)
                if response.headers.get("X-Model-Version") != self.version:
                    raise ProtocolError("The model changed while fetching specs; retry.")
                specs_dir.mkdir(parents=True, exist_ok=True)
                specs_path.write_bytes(response.content)
            key_dir = self.keys_dir / self.version
            key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.info().get("engine") == "thermometer":
                self._codec = ThermometerCodec(self.info(), specs_path, key_dir)
            else:
                self._codec = ConcreteMLCodec(self.info(), specs_dir, key_dir)
        return self._codec

    # --- keys -------------------------------------------------------------------------------
    def keygen(self) -> None:
        """Generate the shared secret and evaluation keys once per model version (0600 files)."""
        key_dir = self.keys_dir / self.version
        fresh = not any(key_dir.glob("*")) if key_dir.exists() else True
        started = time.perf_counter()
        if fresh:
            self.log(f"keygen for model {self.version} ...")
        self.codec().keygen()
        for path in [key_dir, *key_dir.rglob("*")]:
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
        if fresh:
            self.log(f"keygen done in {time.perf_counter() - started:.1f} s (keys in {key_dir})")

    def key_id(self) -> str:
        """The id of our evaluation key on the server, uploading it first if needed."""
        id_file = self.keys_dir / self.version / "server-key-id.json"
        if id_file.exists():
            return json.loads(id_file.read_text())["key_id"]
        self.keygen()
        evaluation_keys = self.codec().evaluation_keys()
        self.log(f"uploading evaluation keys ({len(evaluation_keys) / 1e6:.1f} MB) ...")
        started = time.perf_counter()
        answer = _check(
            self._http.post(
                f"{self.server_url}/fhe/keys",
                data=evaluation_keys,
                params={"model_version": self.version},
                timeout=600,
            ),
            201,
        ).json()
        self.log(f"uploaded in {time.perf_counter() - started:.1f} s: key_id {answer['key_id']}")
        id_file.write_text(json.dumps(answer))
        os.chmod(id_file, 0o600)
        return answer["key_id"]

    # --- encryption -------------------------------------------------------------------------
    def party_row(self, party: str, values) -> np.ndarray:
        """A full-width row holding `values` in `party`'s columns (zeros elsewhere).

        `values`: a list in the party's column order, or a dict keyed by feature name or index.
        """
        info = self.info()
        columns = info["parties"][party]
        if isinstance(values, dict):
            names = info.get("feature_names") or []
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
        row = np.zeros((1, info["n_features"]))
        row[0, columns] = np.asarray(values, dtype=np.float64)
        return row

    def encrypt(self, party: str, values) -> bytes:
        """Encode and encrypt only `party`'s columns, as circuit argument i (i = its position)."""
        self.keygen()
        return self.codec().encrypt(party, self.party_row(party, values))

    # --- submitting -------------------------------------------------------------------------
    def _with_key(self, send) -> requests.Response:
        """`send(key_id)`; if the server evicted our key (404), upload it again and retry once."""
        response = send(self.key_id())
        if response.status_code == 404 and "Unknown key" in response.text:
            self.log("the server no longer has our evaluation key; uploading it again")
            (self.keys_dir / self.version / "server-key-id.json").unlink(missing_ok=True)
            response = send(self.key_id())
        return response

    def _patiently(self, send) -> requests.Response:
        """`send()`, again after Retry-After while the server's encrypted queue is full (429) or
        its executor restarts (503), at most `busy_retries` times."""
        for _ in range(self.busy_retries):
            response = send()
            wait = _retry_after(response) if response.status_code in (429, 503) else None
            if wait is None:
                return response
            self.log(f"server busy ({response.status_code}); retrying in {wait:.0f} s")
            time.sleep(wait)
        return send()

    def stage(self, party: str, ciphertext: bytes) -> None:
        """Leave our ciphertext on the server for the next prediction with the shared key."""
        response = self._with_key(
            lambda key_id: self._http.put(
                f"{self.server_url}/fhe/keys/{key_id}/inputs/{party}",
                data=ciphertext,
                params={"model_version": self.version},
                timeout=60,
            )
        )
        _check(response, 201)

    def predict(self, ciphertexts: dict[str, bytes]) -> tuple[bytes, float]:
        """Run the circuit on these parties' ciphertexts plus the staged ones; encrypted result."""
        def send(key_id: str) -> requests.Response:
            # (None, text) parts keep the body multipart even when every party input is staged
            parts = {"key_id": (None, key_id), "model_version": (None, self.version)}
            for party, data in ciphertexts.items():
                parts[party] = (party, data, "application/octet-stream")
            return self._http.post(f"{self.server_url}/predict", files=parts, timeout=600)

        self.log("running the encrypted prediction ...")
        response = _check(self._with_key(lambda key_id: self._patiently(lambda: send(key_id))), 201)
        seconds = float(response.headers.get("X-FHE-Execution-Seconds", "nan"))
        self.log(f"FHE execution on the server took {seconds:.2f} s")
        return response.content, seconds

    def decrypt(self, encrypted_result: bytes) -> tuple[object, float]:
        """(label, its share of the votes or probability) from the encrypted result."""
        probabilities = self.codec().decrypt(encrypted_result)
        best = int(np.argmax(probabilities))
        return self.info()["classes"][best], float(probabilities[best])

    def score(self, values_by_party: dict) -> tuple[object, float]:
        """Encrypt every given party's values, predict (staged parts fill the rest), decrypt."""
        ciphertexts = {p: self.encrypt(p, v) for p, v in values_by_party.items()}
        return self.decrypt(self.predict(ciphertexts)[0])

    def explain(
        self, values_by_party: dict, party: str, feature, approved_label=None, max_tries: int = 64
    ) -> dict:
        """Smallest change of one feature of `party` that turns a denial into approval.

        Tries one value of each of the feature's other encoding levels, nearest first, each
        through an encrypted prediction, and stops at the first approval.
        """
        info = self.info()
        approved_label = info["classes"][-1] if approved_label is None else approved_label
        names = info.get("feature_names") or []
        column = names.index(feature) if feature in names else int(feature)
        label, probability = self.score(values_by_party)
        result = {"feature": feature, "decision": label, "probability": probability}
        if label == approved_label:
            return {**result, "already_approved": True}
        row = self.party_row(party, values_by_party[party])
        current = row[0, column]
        candidates = self.codec().other_levels(column, current)
        candidates.sort(key=lambda v: abs(v - current))
        for tries, value in enumerate(candidates[:max_tries], start=1):
            changed = dict(values_by_party)
            party_values = row[0, info["parties"][party]].copy()
            party_values[info["parties"][party].index(column)] = value
            changed[party] = party_values.tolist()
            label, probability = self.score(changed)
            self.log(f"  {feature} = {value:g}: {label} (p={probability:.2f})")
            if label == approved_label:
                return {**result, "value": float(value), "change": float(value - current),
                        "probability_after": probability, "encrypted_predictions": tries + 1}  # fmt: skip
        return {**result, "value": None, "encrypted_predictions": len(candidates[:max_tries]) + 1}


SPECS_FILES = {"thermometer": "client.specs"}


class ThermometerCodec:
    """A party of the thermometer engine: threshold bits in, vote counts out (concrete only)."""

    def __init__(self, info: dict, specs_path: Path, key_dir: Path) -> None:
        from concrete import fhe

        self._fhe = fhe
        self.info = info
        self.parties = list(info["parties"])
        edges = [None] * info["n_features"]
        for party in info["encoding"].values():
            for column, column_edges in zip(party["columns"], party["edges"]):
                edges[column] = column_edges
        self.encoding = ThresholdEncoding(edges)
        specs = fhe.ClientSpecs.deserialize(specs_path.read_bytes())
        self.client = fhe.Client(specs, keyset_cache_directory=key_dir)

    def keygen(self) -> None:
        self.client.keygen(force=False)

    def evaluation_keys(self) -> bytes:
        return self.client.evaluation_keys.serialize()

    def encrypt(self, party: str, row: np.ndarray) -> bytes:
        index = self.parties.index(party)
        args = [None] * len(self.parties)
        args[index] = self.encoding.bits(row, self.info["parties"][party])[0]
        encrypted = self.client.encrypt(*args)
        # concrete returns a bare value, not a tuple, for a one-argument circuit
        return (encrypted if len(args) > 1 else (encrypted,))[index].serialize()

    def decrypt(self, encrypted_result: bytes) -> np.ndarray:
        """Each class's share of the trees' votes (a boosted model: each class's probability)."""
        output = int(np.asarray(self.client.decrypt(self._fhe.Value.deserialize(encrypted_result))))
        return decode_shares([output], **self.info["decoding"])[0]

    def other_levels(self, column: int, current: float) -> list[float]:
        """One value inside each encoding level of `column` other than the level of `current`."""
        edges = self.encoding.edges[column]
        inner = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        step = (edges[-1] - edges[0]) / max(1, len(edges) - 1) or 1.0
        values = [float(edges[0]), *inner, float(edges[-1] + step / 2)]
        level = int(np.searchsorted(edges, current, side="left"))
        return [v for i, v in enumerate(values) if i != level]


class ConcreteMLCodec:
    """A party of the concrete-ml engine (FHE_ENGINE=concrete-ml): concrete-ml's FHEModelClient."""

    def __init__(self, info: dict, specs_dir: Path, key_dir: Path) -> None:
        from concrete.ml.deployment import FHEModelClient

        self.info = info
        self.client = FHEModelClient(str(specs_dir), key_dir=str(key_dir))

    def keygen(self) -> None:
        self.client.generate_private_and_evaluation_keys(force=False)

    def evaluation_keys(self) -> bytes:
        return self.client.get_serialized_evaluation_keys()

    def encrypt(self, party: str, row: np.ndarray) -> bytes:
        parties = self.info["parties"]
        index = list(parties).index(party)
        q_row = self.client.model.quantize_input(row)
        args = [None] * len(parties)
        args[index] = q_row[:, parties[party]]
        return self.client.client.encrypt(*args)[index].serialize()

    def decrypt(self, encrypted_result: bytes) -> np.ndarray:
        return self.client.deserialize_decrypt_dequantize(encrypted_result)[0]

    def other_levels(self, column: int, current: float) -> list[float]:
        quantizer = self.client.model.input_quantizers[column]
        levels = np.unique(quantizer.dequant(np.arange(2**quantizer.n_bits)))
        current_level = quantizer.quant(np.array([current]))[0]
        return [v for v in levels if quantizer.quant(np.array([v]))[0] != current_level]


# --- command line ---------------------------------------------------------------------------
def _values(text: str):
    """JSON (object or list), or a path to a one-row CSV with a header."""
    if text.lstrip().startswith(("{", "[")):
        return json.loads(text)
    with open(text, newline="") as file:
        return {k: float(v) for k, v in next(csv.DictReader(file)).items()}


def _inputs(pairs: list[str]) -> dict:
    inputs = {}
    for pair in pairs or []:
        party, _, values = pair.partition("=")
        inputs[party] = _values(values)
    return inputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anonymizer.client", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("ANONYMIZER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("PARTY_WORKDIR", Path.home() / ".anomed-party")))
    parser.add_argument("--keys-dir", type=Path, help="the secret keys the parties share (default WORKDIR/keys)")
    parser.add_argument("--token", default=os.environ.get("ANONYMIZER_PARTY_TOKEN"), help="this party's bearer token, if the server requires one")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print the served model's parties and version")
    commands.add_parser("keygen", help="generate the shared keys for the served model (once)")
    commands.add_parser("upload-key", help="upload the evaluation key, print its id")
    encrypt = commands.add_parser("encrypt", help="encrypt one party's values to a file")
    stage = commands.add_parser("stage", help="encrypt one party's values and stage them on the server")
    for sub in (encrypt, stage):
        sub.add_argument("--party", required=True)
        sub.add_argument("--values", required=True, help="JSON object/list or a one-row CSV path")
    encrypt.add_argument("--out", type=Path, required=True)
    predict = commands.add_parser("predict", help="predict with these inputs plus the staged ones")
    predict.add_argument("--input", action="append", metavar="PARTY=VALUES", help="repeatable")
    predict.add_argument("--ciphertext", action="append", metavar="PARTY=FILE", help="repeatable")
    explain = commands.add_parser("explain", help="smallest change of one feature that gets approval")
    explain.add_argument("--input", action="append", metavar="PARTY=VALUES", required=True)
    explain.add_argument("--party", default="credit_bureau")
    explain.add_argument("--feature", default="years_employed")
    args = parser.parse_args(argv)

    party = PartyClient(args.server, args.workdir, args.keys_dir, token=args.token)
    try:
        if args.command == "info":
            print(json.dumps(party.info(), indent=2))
        elif args.command == "keygen":
            party.keygen()
        elif args.command == "upload-key":
            print(party.key_id())
        elif args.command == "encrypt":
            args.out.write_bytes(party.encrypt(args.party, _values(args.values)))
            _say(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
        elif args.command == "stage":
            party.stage(args.party, party.encrypt(args.party, _values(args.values)))
            _say(f"staged {args.party}'s ciphertext for key {party.key_id()}")
        elif args.command == "predict":
            ciphertexts = {p: party.encrypt(p, v) for p, v in _inputs(args.input).items()}
            for pair in args.ciphertext or []:
                name, _, path = pair.partition("=")
                ciphertexts[name] = Path(path).read_bytes()
            label, probability = party.decrypt(party.predict(ciphertexts)[0])
            print(json.dumps({"decision": label, "probability": probability}))
        elif args.command == "explain":
            print(json.dumps(party.explain(_inputs(args.input), args.party, args.feature)))
    except (ProtocolError, ValueError, requests.RequestException) as error:
        _say(f"error: {error}")
        return 1
    return 0


def _retry_after(response: requests.Response) -> float | None:
    """The Retry-After seconds of a response (capped at 30), None without a usable one."""
    try:
        return min(float(response.headers["Retry-After"]), 30.0)
    except (KeyError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())

