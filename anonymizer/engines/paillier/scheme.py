"""Paillier for additive models: the wire format of public keys and ciphertexts, the server's
homomorphic score, and the blinding that leaves the applicant the decision and nothing more.

python-paillier (`phe`, with gmpy2) makes keys, encrypts and decrypts; this module adds what it
has no notion of: fixed-width packing of many ciphertexts, validation of untrusted keys and
ciphertexts, the integer score Enc(offset + sum_i w_i z_i) = g^offset * prod_i c_i^{w_i}, and
blinding. Imported by the server and by the party codec (no server dependency).

Blinding (the decision stays exact, the score does not leave the server): the server returns
fresh encryptions of `rho_i * d_i + e_i`, each with its own random `rho_i = 2^j * u` (j uniform
in [0, RHO_SHIFTS), u uniform in [2^(RHO_BITS-1), 2^RHO_BITS): one value places its d nowhere
within a factor 2^RHO_SHIFTS) and noise e_i in (-rho_i, 0], so only the sign of d_i survives.
Two classes: one value, d = score + shift (the second class iff > 0). K classes: one value per
pair k < l, d = o_k - o_l + 1 (k wins iff > 0, ties to the first class); independent rho per pair,
so no ratio of scores survives, only their order. The power is computed with the same work for
every rho (blinded_power), and the engine sends no execution time.
"""

import hashlib
import json
import secrets
import threading
import time
from collections import deque

import gmpy2
import numpy as np

from .proofs import NthPowers, random_unit

SCHEME = "paillier"
MIN_MODULUS_BITS = 2048
MAX_MODULUS_BITS = 8192
# the wire format of the largest public key accepted, with room for JSON's whitespace
MAX_PUBLIC_KEY_BYTES = MAX_MODULUS_BITS // 4 + 1024
RHO_BITS = 64
RHO_SHIFTS = 192
_SMALL_PRIMES = [p for p in range(3, 20000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]


class BadKey(ValueError):
    """An upload that is not a usable Paillier public key."""


def public_key_bytes(public_key) -> bytes:
    """A `phe.PaillierPublicKey` as its wire format: JSON {"scheme", "n"} (n in hex)."""
    return json.dumps({"scheme": SCHEME, "n": format(public_key.n, "x")}).encode()


def fingerprint(public_key) -> str:
    """SHA-256 (hex) of the public key's wire format: what the applicant tells its co-parties out
    of band beside the key id, so that they can refuse a key the server substitutes."""
    return hashlib.sha256(public_key_bytes(public_key)).hexdigest()


def parse_public_key(serialized: bytes):
    """A `phe.PaillierPublicKey` from untrusted bytes; BadKey naming what is wrong."""
    from phe import PaillierPublicKey

    try:
        document = json.loads(serialized)
        scheme, text = document["scheme"], document["n"]
        digits = len(text)
        # no number of any size from an untrusted body: too many digits are refused unparsed
        n = int(text, 16) if digits <= MAX_MODULUS_BITS // 4 else None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BadKey(
            'Not a Paillier public key: expected JSON {"scheme": "paillier", "n": "<hex>"}.'
        ) from None
    if n is None:
        raise BadKey(f"The modulus has {digits} hex digits; at most {MAX_MODULUS_BITS} bits are accepted.")
    if scheme != SCHEME:
        raise BadKey(f"The key is for the scheme {scheme!r}; the served model uses {SCHEME!r}.")
    if n.bit_length() < MIN_MODULUS_BITS or n.bit_length() > MAX_MODULUS_BITS:
        raise BadKey(
            f"The modulus has {n.bit_length()} bits; {MIN_MODULUS_BITS} to {MAX_MODULUS_BITS} are accepted."
        )
    if n % 2 == 0 or any(n % p == 0 for p in _SMALL_PRIMES):
        raise BadKey("The modulus is even or has a small factor: not a product of two large primes.")
    return PaillierPublicKey(n)


def width(public_key) -> int:
    """Bytes of one packed ciphertext: those of n^2."""
    return (public_key.nsquare.bit_length() + 7) // 8


def pack(public_key, ciphertexts: list[int]) -> bytes:
    """Ciphertexts as fixed-width big-endian integers, one after another."""
    size = width(public_key)
    return b"".join(int(c).to_bytes(size, "big") for c in ciphertexts)


def unpack(public_key, data: bytes, count: int, name: str) -> list[int]:
    """`count` ciphertexts from untrusted bytes; ValueError unless each is a unit mod n^2."""
    size = width(public_key)
    if len(data) != count * size:
        raise ValueError(
            f"The ciphertext of {name!r} has {len(data)} bytes; {count} ciphertexts of {size} bytes "
            f"(one per threshold bit) were expected."
        )
    values = [gmpy2.mpz(int.from_bytes(data[i : i + size], "big")) for i in range(0, len(data), size)]
    for value in values:
        if not 0 < value < public_key.nsquare or gmpy2.gcd(value, public_key.n) != 1:
            raise ValueError(f"The ciphertext of {name!r} holds a value that is not in Z*_(n^2).")
    return values


def encrypt_bits(public_key, bits: np.ndarray, private_key=None) -> list[int]:
    """One fresh encryption per 0/1 bit (with the private key at hand, by CRT: ~3x faster)."""
    n, nsquare = public_key.n, public_key.nsquare
    if private_key is None:
        return [public_key.raw_encrypt(int(bit)) for bit in bits]
    powers = NthPowers(n, private_key.p, private_key.q)([random_unit(n) for _ in bits])
    return [int((1 + int(bit) * n) * r_n % nsquare) for bit, r_n in zip(bits, powers)]


def decrypt_signed(private_key, ciphertexts: list[int]) -> list[int]:
    """Plaintexts as signed integers (those above n/2 are negative)."""
    n = private_key.public_key.n
    values = [private_key.raw_decrypt(int(c)) for c in ciphertexts]
    return [v - n if v > n // 2 else v for v in values]


def encrypted_scores(
    public_key, bits_by_party: list[list[int]], weights: list[np.ndarray], constants
) -> list[int]:
    """Enc(constant_k + sum_p z_p @ W_p[:, k]) for each output k, homomorphically: the
    ciphertexts of equal weight are multiplied first, then raised to that weight once."""
    nsquare, n = gmpy2.mpz(public_key.nsquare), public_key.n
    ciphertexts = [c for party in bits_by_party for c in party]
    stacked = np.concatenate(weights)
    scores = []
    for k, constant in enumerate(constants):
        total = gmpy2.mpz(1 + (int(constant) % n) * n)  # g^constant with g = n + 1
        for weight in np.unique(stacked[:, k]).tolist():
            if weight == 0:
                continue
            product = gmpy2.mpz(1)
            for index in np.flatnonzero(stacked[:, k] == weight).tolist():
                product = product * ciphertexts[index] % nsquare
            if weight < 0:
                product = gmpy2.invert(product, nsquare)
            total = total * gmpy2.powmod(product, abs(weight), nsquare) % nsquare
        scores.append(total)
    return scores


class ServerKey:
    """An uploaded public key with a few fresh obfuscators r^n mod n^2 made ahead of time (one
    per output of an answer, the costly part of a fresh encryption; refilled in the background)."""

    KEPT = 8
    REFILL_AFTER = 0.2  # seconds: after the answer is out, not competing with it for the GIL

    def __init__(self, public_key, kept: int = KEPT) -> None:
        self.public_key = public_key
        self.kept = kept
        self._ready: deque = deque()
        self._lock = threading.Lock()
        self._filling = False

    def __getattr__(self, name):  # n, nsquare, raw_encrypt: the public key's
        return getattr(self.public_key, name)

    def obfuscator(self) -> int:
        """A fresh r^n mod n^2, never handed out twice."""
        try:
            value = self._ready.popleft()
        except IndexError:
            value = self._fresh()
        self.refill()
        return value

    def _fresh(self):
        r = secrets.randbelow(self.public_key.n - 1) + 1
        return gmpy2.powmod(r, self.public_key.n, self.public_key.nsquare)

    def refill(self) -> None:
        """Make obfuscators up to `kept` in a background thread (one thread at a time)."""
        with self._lock:
            if self._filling or len(self._ready) >= self.kept:
                return
            self._filling = True

        def fill():
            try:
                time.sleep(self.REFILL_AFTER if self._ready else 0)
                while len(self._ready) < self.kept:
                    self._ready.append(self._fresh())
            finally:
                self._filling = False

        threading.Thread(target=fill, daemon=True).start()


def blinded_outputs(n_classes: int) -> int:
    """Values in one blinded answer: one for two classes, one per pair of classes for K."""
    return 1 if n_classes == 2 else n_classes * (n_classes - 1) // 2


def pairwise_differences(key, scores: list[int]) -> list[int]:
    """Enc(o_k - o_l + 1) for k < l: positive iff class k wins the pair (ties to the first)."""
    nsquare, g = key.nsquare, 1 + key.n
    inverses = [gmpy2.invert(score, nsquare) for score in scores]
    return [
        scores[k] * inverses[m] % nsquare * g % nsquare
        for k in range(len(scores))
        for m in range(k + 1, len(scores))
    ]


def blinding_factor() -> tuple[int, int]:
    """(u, j) of one rho = 2^j * u: u of exactly RHO_BITS bits, j uniform in [0, RHO_SHIFTS)."""
    return (1 << (RHO_BITS - 1)) + secrets.randbelow(1 << (RHO_BITS - 1)), secrets.randbelow(RHO_SHIFTS)


def blinded_power(ciphertext, u: int, shift: int, nsquare):
    """ciphertext^(u * 2^shift) mod n^2 with the same work for every shift: u has a fixed length
    and all RHO_SHIFTS squarings are made, the one at `shift` kept (the time says nothing of rho)."""
    power = gmpy2.powmod(ciphertext, u, nsquare)
    kept = power
    for step in range(RHO_SHIFTS):
        if step == shift:
            kept = power
        power = power * power % nsquare
    return kept


def blinded(key: ServerKey, scores: list[int], two_classes: bool) -> list[int]:
    """Fresh encryptions of rho_i * d_i + e_i (module docstring): for two classes d = the score
    plus shift, for K classes one d per pair of classes, each with its own rho_i and e_i in
    (-rho_i, 0], so that only the signs survive: the decision and the order of the classes."""
    n, nsquare = key.n, key.nsquare
    differences = [scores[0]] if two_classes else pairwise_differences(key, scores)
    out = []
    for difference in differences:
        u, shift = blinding_factor()
        noise = -secrets.randbelow(u << shift)
        # times g^e r^n with a fresh r: a new encryption, unrelated to the inputs' randomness
        fresh = (1 + (noise % n) * n) * key.obfuscator() % nsquare
        out.append(int(blinded_power(difference, u, shift, nsquare) * fresh % nsquare))
    return out


def blinded_labels(values: list[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """Class indices from decrypted blinded values (one row of `blinded_outputs` per answer):
    two classes, the second iff > 0; K classes, the one that wins each of its pairs."""
    values = np.asarray(values, dtype=object).reshape(-1, blinded_outputs(n_classes))
    if n_classes == 2:
        return np.array([1 if v > 0 else 0 for v in values[:, 0]])
    pairs = [(k, m) for k in range(n_classes) for m in range(k + 1, n_classes)]
    labels = []
    for row in values:
        wins = np.zeros(n_classes, dtype=np.int64)
        for (k, m), value in zip(pairs, row):
            wins[k if value > 0 else m] += 1
        labels.append(int(np.argmax(wins)))  # the winner of every pair has K - 1 wins
    return np.array(labels)
