"""Paillier parties that cheat: bit proofs checked at the door, answers that carry only signs.

Written as the attacker: an applicant that holds the private key and encrypts powers of
B = 2^270 (the extraction of the bank's points from one answer), non-bits, non-monotone bits, a
co-party that stages zeros, a proof replayed for another key, party or encoding; and the K-class
estimator that read ratios of scores from one answer.
"""

import json
import math
import secrets
from fractions import Fraction
from pathlib import Path

import gmpy2
import numpy as np
import phe
import pytest
import requests
from helpers import CREDIT_ENV, multipart, plaintext_labels, quiet_party, random_rows

from anonymizer.engines.paillier import proofs, scheme
from challenge_stub.dataset import PARTY_LAYOUT
from devtools.attacks import B, forged, forged_part
from devtools.launch import GunicornServer

VECTORS = Path(__file__).parent / "data" / "paillier_proof_vectors.json"


@pytest.fixture(scope="module")
def keypair():
    return phe.generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)


def context(party: str = "applicant", key_id: str = "k1", digest: str = "d1") -> proofs.ProofContext:
    return proofs.ProofContext(key_id, digest, party)


def packed(public_key, ciphertexts) -> bytes:
    return scheme.pack(public_key, ciphertexts)


def test_honest_proofs_verify_with_and_without_the_private_key(keypair):
    public_key, private_key = keypair
    sizes, bits = [3, 1, 4], [1, 1, 0, 0, 1, 1, 1, 1]
    for private in (None, (private_key.p, private_key.q)):
        ciphertexts, column_proofs = proofs.encrypt_and_prove(public_key.n, bits, sizes, context(), private)
        assert scheme.decrypt_signed(private_key, ciphertexts) == bits
        blob = proofs.pack_proofs(column_proofs, public_key.n)
        assert len(blob) == proofs.proof_bytes(sizes, public_key.n)
        back = proofs.unpack_proofs(blob, sizes, public_key.n, "applicant")
        proofs.verify(public_key.n, ciphertexts, packed(public_key, ciphertexts), back, sizes, context())


def test_a_proof_is_bound_to_its_key_id_encoding_party_and_key(keypair):
    public_key, _ = keypair
    other_key, _ = phe.generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)
    sizes, bits = [2, 2], [1, 0, 1, 1]
    ciphertexts, column_proofs = proofs.encrypt_and_prove(public_key.n, bits, sizes, context())
    data = packed(public_key, ciphertexts)
    for elsewhere in (context(key_id="k2"), context(digest="d2"), context(party="bank")):
        with pytest.raises(proofs.InvalidProof, match="transcript"):
            proofs.verify(public_key.n, ciphertexts, data, column_proofs, sizes, elsewhere)
    with pytest.raises(proofs.InvalidProof):
        proofs.verify(other_key.n, ciphertexts, data, column_proofs, sizes, context())
    with pytest.raises(proofs.InvalidProof):  # the columns' proofs swapped: positions are bound
        proofs.verify(public_key.n, ciphertexts, data, column_proofs[::-1], sizes, context())


@pytest.mark.parametrize(
    "name, plaintexts, bad_column",
    [
        ("powers of B", [1, 1, 0, B, 1, 0, 0], 1),  # the one-answer extraction
        ("a two", [2, 1, 0, 0, 0, 0, 0], 0),
        ("minus one", [1, 1, 0, 1, 1, 0, -1], 1),
        ("non-monotone bits", [1, 1, 0, 0, 1, 0, 1], 1),  # each a bit, together no thermometer
    ],
)
def test_a_private_key_holder_cannot_prove_what_is_not_a_thermometer_code(
    keypair, name, plaintexts, bad_column
):
    public_key, private_key = keypair
    sizes = [3, 4]
    ciphertexts, column_proofs = forged(public_key, plaintexts, sizes, context())
    with pytest.raises(proofs.InvalidProof, match=f"column {bad_column}: its ciphertexts are not"):
        proofs.verify(
            public_key.n, ciphertexts, packed(public_key, ciphertexts), column_proofs, sizes, context()
        )


def test_the_forger_passes_when_it_tells_the_truth(keypair):
    """The forging helper above is the honest prover when its plaintexts are a pattern: the
    refusals above come from the plaintexts, not from a broken forger."""
    public_key, private_key = keypair
    sizes, plaintexts = [3, 4], [1, 1, 0, 1, 1, 1, 0]
    ciphertexts, column_proofs = forged(public_key, plaintexts, sizes, context())
    proofs.verify(public_key.n, ciphertexts, packed(public_key, ciphertexts), column_proofs, sizes, context())


def test_stored_vectors_verify_and_their_mutations_do_not():
    """Fixed vectors pin the wire format and the verifier (made once with encrypt_and_prove)."""
    vector = json.loads(VECTORS.read_text())
    n, sizes = int(vector["n"], 16), vector["column_sizes"]
    data, blob = bytes.fromhex(vector["ciphertexts"]), bytes.fromhex(vector["proofs"])
    key = phe.PaillierPublicKey(n)
    ciphertexts = scheme.unpack(key, data, sum(sizes), "applicant")
    ctx = proofs.ProofContext(**vector["context"])
    proofs.verify(n, ciphertexts, data, proofs.unpack_proofs(blob, sizes, n, "applicant"), sizes, ctx)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    with pytest.raises(proofs.InvalidProof):
        proofs.verify(
            n, ciphertexts, data, proofs.unpack_proofs(bytes(flipped), sizes, n, "applicant"), sizes, ctx
        )


def test_multi_power_equals_the_product_of_powers(keypair):
    modulus = gmpy2.mpz(keypair[0].nsquare)
    rng = np.random.default_rng(7)
    for count in (1, 5, 40, 100):
        pairs = [
            (gmpy2.mpz(int(rng.integers(2, 1 << 62))), gmpy2.mpz(int(rng.integers(0, 1 << 62)) << 200))
            for _ in range(count)
        ]
        expected = gmpy2.mpz(1)
        for base, exponent in pairs:
            expected = expected * gmpy2.powmod(base, exponent, modulus) % modulus
        assert proofs.multi_power(pairs, modulus) == expected


# --- K classes: one answer, only signs ------------------------------------------------------------


def single_rho_answer(scores: list[int]) -> list[int]:
    """What the K-class blinding before this change decrypted to: one rho for every class."""
    u, shift = scheme.blinding_factor()
    rho = u << shift
    step = rho // len(scores)
    return [rho * s + (len(scores) - 1 - k) * step + secrets.randbelow(step) for k, s in enumerate(scores)]


def consistent_with_one_rho(values: list[int], width: int) -> int:
    """Score vectors o (each in [0, 2^width)) with o_k = floor(v_k / rho) for one rho: what the
    single-rho answer leaves an estimator (an upper bound)."""
    count = 0
    for o0 in range(1, 1 << width):
        low, high = Fraction(values[0], o0 + 1), Fraction(values[0], o0)  # rho in (low, high]
        sizes = [
            max(0, min(math.floor(v / low), (1 << width) - 1) - max(math.floor(v / high), 0) + 1)
            for v in values[1:]
        ]
        count += math.prod(sizes)
    return count


def consistent_with_pairs(values: list[int], n_classes: int, width: int) -> int:
    """Score vectors that some rho in the blinding's range [L, H) and noise in (-rho, 0] map to
    exactly this answer, v = rho * d + e with d = o_k - o_l + 1 per pair."""
    low, high = 1 << (scheme.RHO_BITS - 1), (1 << scheme.RHO_BITS) << (scheme.RHO_SHIFTS - 1)
    pairs = [(k, m) for k in range(n_classes) for m in range(k + 1, n_classes)]

    def feasible(v: int, d: int) -> bool:
        if d > 0:  # rho in [v / d, v / (d - 1))
            return v > 0 and v < high * d and (d == 1 or v > low * (d - 1))
        w = -v  # rho in (w / (1 - d), w / -d]
        return v <= 0 and w < high * (1 - d) and (d == 0 or w >= low * -d)

    return sum(
        all(feasible(v, o[k] - o[m] + 1) for (k, m), v in zip(pairs, values))
        for o in np.ndindex(*(1 << width,) * n_classes)
    )


def test_k_class_answers_keep_the_order_of_the_classes_and_no_ratio(keypair):
    """Three classes, 4-bit scores: one answer used to leave a handful of the 4,096 score vectors;
    now it leaves those with the same order of the classes (a few values of rho at the top of
    its range exclude a few more: the log-uniform blinding's edge)."""
    public_key, private_key = keypair
    key = scheme.ServerKey(public_key)
    width, n_classes = 4, 3
    rng = np.random.default_rng(3)
    left, same = 0, 0
    for _ in range(5):
        scores = [int(v) for v in rng.integers(1, 1 << width, size=n_classes)]
        assert consistent_with_one_rho(single_rho_answer(scores), width) <= 64  # before: of 4,096
        encrypted = [public_key.raw_encrypt(s) for s in scores]
        values = scheme.decrypt_signed(private_key, scheme.blinded(key, encrypted, two_classes=False))
        assert len(values) == scheme.blinded_outputs(n_classes)
        assert scheme.blinded_labels(values, n_classes)[0] == int(np.argmax(scores))
        same_order = sum(
            all((o[k] >= o[m]) == (scores[k] >= scores[m]) for k in range(3) for m in range(k + 1, 3))
            for o in np.ndindex(*(1 << width,) * n_classes)
        )
        consistent = consistent_with_pairs(values, n_classes, width)
        assert consistent <= same_order  # never more than the order...
        left, same = left + consistent, same + same_order
    assert left >= 0.8 * same  # ...and nearly all of it: no magnitude, no ratio


def test_every_blinded_power_does_the_same_work():
    """The blinding factor's length never shows in the work: RHO_SHIFTS squarings every time."""

    class Counting(int):
        squarings = 0

        def __mul__(self, other):
            Counting.squarings += 1
            return Counting(int(self) * int(other))

        def __mod__(self, other):
            return Counting(int(self) % int(other))

    counts = []
    for shift in (0, scheme.RHO_SHIFTS // 2, scheme.RHO_SHIFTS - 1):
        Counting.squarings = 0
        result = scheme.blinded_power(Counting(3), 5, shift, 1 << 4000)
        counts.append(Counting.squarings)
        assert int(result) == pow(3, 5 << shift, 1 << 4000)
    assert len(set(counts)) == 1


# --- the real server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, stub):
    model_dir = tmp_path_factory.mktemp("proof-model")
    env = {
        **CREDIT_ENV,
        "ANONYMIZER_ENCRYPTION": "paillier",
        "TREE_SELECTION": "off",
        "TREE_ADDITIVE": "1",
        "CHALLENGE_HOST": stub.host,
        "MODEL_DIR": str(model_dir),
        "MAX_KEYS_PER_OWNER": "64",
    }
    with GunicornServer("app:application", env=env, log_path=model_dir.parent / "proofs.log") as started:
        assert requests.post(started.url + "/fit", timeout=900).status_code == 201
        yield started


def by_party(row) -> dict:
    return {party: row[columns].tolist() for party, columns in PARTY_LAYOUT.items()}


def attack_part(client, key_id: str, party: str, plaintexts: list[int]) -> bytes:
    """What a cheating private-key holder sends for `party`: its plaintexts, forged proofs."""
    sizes = [client.codec().encoding.n_bits(c) for c in client.info().parties[party]]
    ctx = proofs.ProofContext(key_id, client.info().keys_digest, party)
    return forged_part(client.codec().public_key, plaintexts, sizes, ctx)


def test_the_powers_of_b_applicant_gets_400_naming_its_column_and_consumes_nothing(server, tmp_path):
    applicant = quiet_party(server.url, tmp_path / "applicant")
    key_id = applicant.key_id()
    values = by_party(random_rows(1, seed=61)[0])
    for party in ("bank", "credit_bureau"):
        applicant.stage(party, applicant.encrypt(party, values[party]))
    honest = applicant.encrypt("applicant", values["applicant"])
    row = applicant.party_row("applicant", values["applicant"])
    bits = [int(b) for b in applicant.codec().encoding.bits(row, PARTY_LAYOUT["applicant"])[0]]
    cheat = list(bits)
    cheat[0] = B  # the applicant's first position carries B instead of its bit
    part = attack_part(applicant, key_id, "applicant", cheat)
    response = requests.post(server.url + "/predict", files=multipart(key_id, applicant=part))
    assert response.status_code == 400
    assert "party 'applicant', column 0" in response.json()["description"]
    unproven = scheme.pack(
        applicant.codec().public_key, scheme.encrypt_bits(applicant.codec().public_key, np.array(cheat))
    )
    response = requests.post(server.url + "/predict", files=multipart(key_id, applicant=unproven))
    assert response.status_code == 400 and "proofs" in response.json()["description"]  # no proofs: refused
    response = requests.post(server.url + "/predict", files=multipart(key_id, applicant=honest))
    assert response.status_code == 201  # the staged parts survived both refusals
    assert "X-FHE-Execution-Seconds" not in response.headers  # the time could speak of the blinding
    label, _ = applicant.decrypt(response.content)
    assert label == plaintext_labels(server, random_rows(1, seed=61))[0]


def test_a_co_party_that_stages_zeros_or_non_bits_is_refused_and_nothing_is_kept(server, tmp_path):
    applicant = quiet_party(server.url, tmp_path / "applicant")
    key_id = applicant.key_id()
    values = by_party(random_rows(1, seed=62)[0])
    honest = applicant.encrypt("bank", values["bank"])
    url = f"{server.url}/fhe/keys/{key_id}/inputs/bank"
    zeros = bytes(len(honest))
    response = requests.put(url, data=zeros)
    assert response.status_code == 400 and "'bank'" in response.json()["description"]
    bits = [1] * sum(applicant.codec().encoding.n_bits(c) for c in PARTY_LAYOUT["bank"])
    bits[-1] = 2
    response = requests.put(url, data=attack_part(applicant, key_id, "bank", bits))
    assert response.status_code == 400 and "party 'bank', column" in response.json()["description"]
    # nothing was kept: a prediction without the bank's part names it missing
    applicant.stage("credit_bureau", applicant.encrypt("credit_bureau", values["credit_bureau"]))
    mine = applicant.encrypt("applicant", values["applicant"])
    response = requests.post(server.url + "/predict", files=multipart(key_id, applicant=mine))
    assert response.status_code == 400 and response.json()["code"] == "missing_input"


def test_a_part_proved_for_another_slot_or_key_is_refused(server, tmp_path):
    applicant = quiet_party(server.url, tmp_path / "applicant")
    key_id = applicant.key_id()
    values = by_party(random_rows(1, seed=63)[0])
    bank_part = applicant.encrypt("bank", values["bank"])
    # the same public key uploaded again: another key id with the same modulus
    again = requests.post(server.url + "/fhe/keys", data=applicant.codec().evaluation_keys())
    assert again.status_code == 201
    response = requests.put(f"{server.url}/fhe/keys/{again.json()['key_id']}/inputs/bank", data=bank_part)
    assert response.status_code == 400 and "transcript" in response.json()["description"]
    response = requests.put(f"{server.url}/fhe/keys/{key_id}/inputs/bank", data=bank_part)
    assert response.status_code == 201
