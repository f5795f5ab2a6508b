"""Party codecs, one per engine: a party's values in, its ciphertext out; the result decrypted.

The served engine is named in `/fhe/info`; CODECS maps it to the codec that speaks its client
(the party-side registry: a new engine adds one line here and one in engines/registry.py).
"""

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..engines.thermometer.decoding import decode_shares, unpack_reasons
from ..engines.thermometer.encoding import ThresholdEncoding
from ..wire import FheInfo, rows_in
from .security import check_client_specs


class DecryptedReasons(NamedTuple):
    """What the applicant reads from a prediction that asked for reasons."""

    shares: np.ndarray  # each class's share (one-hot where the scheme reveals the decision only)
    points_lost: list[int]  # per column of `/fhe/info`'s reasons.columns
    margin: int | None  # the decision's margin in points, approved iff > 0 (None: not revealed)
    approves_alone: list[bool]  # whether that column alone at its best bin would approve


def _one(encrypted, index: int):
    """Argument `index` of what `fhe.Client.encrypt` returned: a bare value for one argument."""
    return (encrypted if isinstance(encrypted, tuple) else (encrypted,))[index]


def encoding_from_info(info: FheInfo) -> ThresholdEncoding:
    """Every column's edges, as `/fhe/info`'s `encoding` gives them party by party."""
    edges = [None] * info.n_features
    for party in info.encoding.values():
        for column, column_edges in zip(party["columns"], party["edges"]):
            edges[column] = column_edges
    return ThresholdEncoding(edges)


class ThermometerCodec:
    """A party of the thermometer engine: threshold bits in, votes or scores out (concrete only)."""

    specs_file = "client.specs"
    needs_secret_to_encrypt = True  # concrete encrypts with the secret key the parties share

    def __init__(self, info: FheInfo, specs_path: Path, key_dir: Path) -> None:
        from concrete import fhe

        self._fhe = fhe
        self.info = info
        self.parties = list(info.parties)
        self.encoding = encoding_from_info(info)
        self.specs = fhe.ClientSpecs.deserialize(specs_path.read_bytes())
        self.client = fhe.Client(self.specs, keyset_cache_directory=key_dir)
        # the circuit function of each thing the server computes; None: the circuit's only one
        self.functions = info.functions or {"decide": None}
        self._function_clients: dict = {}
        self._checked = False

    def keygen(self) -> None:
        """Make (or load) the keys, after checking the served specs' security (security.py;
        once per codec: its specs never change, and every encryption passes here)."""
        if not self._checked:
            check_client_specs(self.specs)
            self._checked = True
        self.client.keygen(force=False)

    def _client_of(self, function: str):
        """(the client, its function name) that encrypts for or decrypts `function`: a client of
        that function alone, cut locally from the module's checked specs and sharing its keys —
        concrete's client parses every function's specs on each encryption and decryption (≈ 15
        ms a call with the explanations' 13 functions, ×3 on a loaded machine), one in ≈ 1 ms."""
        name = self.functions[function]
        if name is None:
            return self.client, None  # a one-function circuit
        if name not in self._function_clients:
            self.keygen()
            client = self._fhe.Client(_one_function_specs(self._fhe, self.specs, name))
            client.keys = self.client.keys
            self._function_clients[name] = client
        return self._function_clients[name], name

    def fingerprint(self) -> str | None:
        """No public key to pin under TFHE (the parties share the secret key directory)."""
        return None

    def evaluation_keys(self) -> bytes:
        return self.client.evaluation_keys.serialize()

    def encrypt(
        self, party: str, row: np.ndarray, key_id: str | None = None, function: str = "decide"
    ) -> bytes:
        """`party`'s columns of `row` as its circuit argument: for a decision (which every served
        function but `rows/<count>` takes), or all of `row`'s rows for `function` = rows/<count>."""
        index = self.parties.index(party)
        args = [None] * len(self.parties)
        bits = self.encoding.bits(row, self.info.parties[party])
        args[index] = bits if rows_in(function) else bits[0]
        client, function_name = self._client_of(function if rows_in(function) else "decide")
        encrypted = client.encrypt(*args, function_name=function_name)
        return _one(encrypted, index).serialize()

    def _decrypt(self, encrypted_result: bytes, function: str) -> np.ndarray:
        value = self._fhe.Value.deserialize(encrypted_result)
        client, function_name = self._client_of(function)
        output = client.decrypt(value, function_name=function_name)
        return np.asarray(output).astype(np.int64).reshape(-1)

    def decrypt(self, encrypted_result: bytes) -> np.ndarray:
        """Each class's share of the trees' votes (boosted and additive models: probabilities)."""
        return decode_shares(self._decrypt(encrypted_result, "decide"), **self.info.decoding)[0]

    def decrypt_batch(self, encrypted_result: bytes, function: str, count: int) -> np.ndarray:
        """(count, classes) each decision's shares from a batched result: one per level of a
        batched explanation (`explain/<column>`), one per row of `rows/<count>`."""
        output = self._decrypt(encrypted_result, function)
        if output.size % count:
            raise ValueError(f"A batch of {count} decisions cannot hold {output.size} outputs.")
        return decode_shares(output, **self.info.decoding).reshape(count, -1)

    def decrypt_reasons(self, encrypted_result: bytes) -> DecryptedReasons:
        """The decision's shares, margin and points lost per column from a prediction that
        asked for reasons (the score is additive: a column alone at its best bin gains exactly
        its points)."""
        output = self._decrypt(encrypted_result, "reasons")
        margin = int(output[0]) + int(self.info.decoding["score_shift"])
        reasons = self.info.reasons or {}
        if "groups" in reasons:  # packed, several columns per lookup
            lost = unpack_reasons(output, reasons["groups"], reasons["radices"])
        else:
            lost = [int(points) for points in output[1:]]
        shares = decode_shares(output[:1], **self.info.decoding)[0]
        return DecryptedReasons(shares, lost, margin, [margin <= 0 < margin + p for p in lost])

    def level_values(self, column: int) -> list[float]:
        """One value inside each encoding level of `column`, levels in order."""
        edges = self.encoding.edges[column]
        inner = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        step = (edges[-1] - edges[0]) / max(1, len(edges) - 1) or 1.0
        return [float(edges[0]), *inner, float(edges[-1] + step / 2)]

    def level_of(self, column: int, value: float) -> int:
        """The encoding level of `value` in `column` (edges strictly below it)."""
        return int(np.searchsorted(self.encoding.edges[column], value, side="left"))

    def other_levels(self, column: int, current: float) -> list[float]:
        """One value inside each encoding level of `column` other than the level of `current`."""
        level = self.level_of(column, current)
        return [v for i, v in enumerate(self.level_values(column)) if i != level]


class PaillierCodec:
    """A party of the Paillier engine: threshold bits encrypted under the applicant's public key
    (co-parties never hold a secret); only the applicant's codec decrypts."""

    specs_file = "paillier.json"
    needs_secret_to_encrypt = False
    PRIVATE_FILE, PUBLIC_FILE = "paillier-private.json", "paillier-public.json"

    def __init__(self, info: FheInfo, specs_path: Path, key_dir: Path) -> None:
        from ..engines.paillier import scheme

        self._scheme = scheme
        self.info = info
        self.parties = list(info.parties)
        self.encoding = encoding_from_info(info)
        self.key_dir = key_dir
        self.private_key = self._load_private()
        self.public_key = self.private_key.public_key if self.private_key else self._load_public()

    def _load_private(self):
        from phe import PaillierPrivateKey, PaillierPublicKey

        path = self.key_dir / self.PRIVATE_FILE
        if not path.exists():
            return None
        document = json.loads(path.read_text())
        n, p, q = (int(document[k], 16) for k in ("n", "p", "q"))
        return PaillierPrivateKey(PaillierPublicKey(n), p, q)

    def _load_public(self):
        path = self.key_dir / self.PUBLIC_FILE
        return self._scheme.parse_public_key(path.read_bytes()) if path.exists() else None

    def fingerprint(self) -> str | None:
        """SHA-256 (hex) of the public key held (the applicant's own or the one joined)."""
        return self._scheme.fingerprint(self.public_key) if self.public_key is not None else None

    @staticmethod
    def served_fingerprint(serialized: bytes) -> str:
        """The fingerprint of a served public key (BadKey, a ValueError, if it is not one)."""
        from ..engines.paillier import scheme

        return scheme.fingerprint(scheme.parse_public_key(serialized))

    def keygen(self) -> None:
        """The applicant's key pair, once per keys digest (the private key never leaves here)."""
        if self.private_key is not None:
            return
        from phe import generate_paillier_keypair

        public_key, private_key = generate_paillier_keypair(n_length=self._scheme.MIN_MODULUS_BITS)
        document = {
            k: format(v, "x") for k, v in (("n", public_key.n), ("p", private_key.p), ("q", private_key.q))
        }
        path = self.key_dir / self.PRIVATE_FILE
        path.write_text(json.dumps(document))
        path.chmod(0o600)
        self.private_key, self.public_key = private_key, public_key

    def evaluation_keys(self) -> bytes:
        """What the applicant uploads: the public key alone."""
        return self._scheme.public_key_bytes(self.public_key)

    def use_public_key(self, serialized: bytes) -> None:
        """A co-party's copy of the applicant's public key (fetched by key id)."""
        self.public_key = self._scheme.parse_public_key(serialized)
        (self.key_dir / self.PUBLIC_FILE).write_bytes(serialized)

    def encrypt(self, party: str, row: np.ndarray, key_id: str | None = None) -> bytes:
        """The party's bit ciphertexts and, per column, the proof that they are a thermometer
        code, bound to `key_id`, the served keys digest and the party (proofs.py)."""
        from ..engines.paillier import proofs

        if self.public_key is None or key_id is None:
            raise ValueError("No public key yet: the applicant generates one, co-parties join its key id.")
        columns = self.info.parties[party]
        bits = self.encoding.bits(row, columns)[0]
        sizes = [self.encoding.n_bits(column) for column in columns]
        context = proofs.ProofContext(key_id, self.info.keys_digest, party)
        private = (self.private_key.p, self.private_key.q) if self.private_key else None
        ciphertexts, column_proofs = proofs.encrypt_and_prove(
            self.public_key.n, bits, sizes, context, private
        )
        n = self.public_key.n
        return self._scheme.pack(self.public_key, ciphertexts) + proofs.pack_proofs(column_proofs, n)

    def decrypt(self, encrypted_result: bytes) -> np.ndarray:
        """Each class's share as the answer reveals it (engines/paillier/answers.py): one-hot for
        a blinded additive answer or a single tree, the ensemble's votes or score otherwise."""
        from ..engines.paillier.answers import answer_shares

        if self.private_key is None:
            raise ValueError("Only the applicant, who holds the private key, can decrypt.")
        decoding = self.info.decoding
        values = self._scheme.unpack(self.public_key, encrypted_result, decoding["outputs"], "result")
        return answer_shares(self._scheme.decrypt_signed(self.private_key, values), decoding)

    def decrypt_reasons(self, encrypted_result: bytes) -> DecryptedReasons:
        """The decision, the points lost per reason column and which columns alone would approve
        (engines/paillier/reasons.py); the margin stays blinded."""
        from ..engines.paillier.answers import read_reasons

        if self.private_key is None:
            raise ValueError("Only the applicant, who holds the private key, can decrypt.")
        columns = len(self.info.reasons["columns"])
        values = self._scheme.unpack(self.public_key, encrypted_result, 1 + 2 * columns, "result")
        label, lost, alone = read_reasons(self._scheme.decrypt_signed(self.private_key, values), columns)
        return DecryptedReasons(np.eye(self.info.decoding["n_classes"])[label], lost, None, alone)

    level_values = ThermometerCodec.level_values
    level_of = ThermometerCodec.level_of
    other_levels = ThermometerCodec.other_levels


class ConcreteMLCodec:
    """A party of the concrete-ml engine (FHE_ENGINE=concrete-ml): concrete-ml's FHEModelClient."""

    specs_file = "client.zip"
    needs_secret_to_encrypt = True

    def __init__(self, info: FheInfo, specs_path: Path, key_dir: Path) -> None:
        from concrete.ml.deployment import FHEModelClient

        self.info = info
        self.client = FHEModelClient(str(specs_path.parent), key_dir=str(key_dir))

    def keygen(self) -> None:
        """Make (or load) the keys, after checking the served specs' security (security.py)."""
        check_client_specs(self.client.client.specs)
        self.client.generate_private_and_evaluation_keys(force=False)

    def fingerprint(self) -> str | None:
        return None

    def evaluation_keys(self) -> bytes:
        return self.client.get_serialized_evaluation_keys()

    def encrypt(self, party: str, row: np.ndarray, key_id: str | None = None) -> bytes:
        parties = self.info.parties
        index = list(parties).index(party)
        q_row = self.client.model.quantize_input(row)
        args = [None] * len(parties)
        args[index] = q_row[:, parties[party]]
        return _one(self.client.client.encrypt(*args), index).serialize()

    def decrypt(self, encrypted_result: bytes) -> np.ndarray:
        return self.client.deserialize_decrypt_dequantize(encrypted_result)[0]

    def other_levels(self, column: int, current: float) -> list[float]:
        quantizer = self.client.model.input_quantizers[column]
        levels = np.unique(quantizer.dequant(np.arange(2**quantizer.n_bits)))
        current_level = quantizer.quant(np.array([current]))[0]
        return [v for v in levels if quantizer.quant(np.array([v]))[0] != current_level]


CODECS = {"thermometer": ThermometerCodec, "paillier": PaillierCodec, "concrete-ml": ConcreteMLCodec}


def _one_function_specs(fhe, module_specs, function_name: str):
    """The client specs of one function of a module: its circuit alone, on the module's keyset
    (cut from specs the party has checked, so nothing new to trust)."""
    program = json.loads(module_specs.serialize())
    program["circuits"] = [circuit for circuit in program["circuits"] if circuit["name"] == function_name]
    if len(program["circuits"]) != 1:
        raise ValueError(f"The served specs have no function {function_name!r}.")
    return fhe.ClientSpecs.deserialize(json.dumps(program).encode())


def codec_for(info: FheInfo):
    """The codec class of the engine `/fhe/info` names."""
    engine = info.engine
    if engine not in CODECS:
        raise ValueError(f"This party client does not speak the engine {engine!r}.")
    return CODECS[engine]
