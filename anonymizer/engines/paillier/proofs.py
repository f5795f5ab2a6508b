"""Zero-knowledge proofs that a party's Paillier ciphertexts hold a thermometer code, and their
batched verification: what stops a party (above all the applicant, who holds the private key)
from encrypting anything but the bits the protocol allows.

The statement, per column of a party: its k ciphertexts c_1..c_k encrypt bits t_1 >= ... >= t_k
(t_j = [x > edge_j]), i.e. one of the k + 1 patterns 1^l 0^(k-l). That is the "every bit is 0 or 1"
and the "neighbouring bits differ by 0 or 1" of the issue in one statement. It is proved on one
ciphertext per column: with weights gamma_j from a hash of every ciphertext of the party,
C = prod_j c_j^gamma_j encrypts s_l = gamma_1 + ... + gamma_l for the party's level l, and a
disjunctive (OR) Sigma-protocol for "C / g^(s_i) is an n-th residue" over i = 0..k shows that C
encrypts one of the k + 1 sums (Cramer, Damgaard, Schoenmakers 1994; the Paillier form of
Damgaard and Jurik 2001, section 5). A non-pattern passes the weights with probability about
(k + 1) / 2^128 (each sum is a nonzero linear form in gamma modulo a prime of n); each OR-proof
is made non-interactive by Fiat-Shamir over a hash that binds the context (key id, keys digest,
party), the public key and all the party's ciphertexts, so it cannot be replayed for another key,
model encoding, party or position.

The verifier checks every branch of every column in one equation with random 64-bit weights
lambda (a small-exponent batch test, Bellare, Garay, Rabin 1998):
    (prod z^lambda)^n == prod a^lambda * prod_columns C^(sum e lambda) * g^(-sum s e lambda)
One n-th power and multi-exponentiations with short exponents instead of two n-th powers per
branch. The test is sound in the plaintext component (Z_n, whose prime factors are those of n),
which is all the Sigma-protocol's soundness uses; elements of small order live in the n-th
residues, i.e. encrypt 0. On a failed batch the columns are checked one by one to name the first
bad one. Soundness needs the prime factors of n to exceed 2^128 (see docs/privacy.md: the server
checks for factors below 20,000 only, a key proof is future work).

python-paillier has no proofs and gmpy2 has the arithmetic: the protocol is written here, with
test vectors in tests/test_paillier_proofs.py. Imported by the server and the party codec.
"""

import hashlib
import secrets
import threading
from dataclasses import dataclass

import gmpy2

CHALLENGE_BITS = 128
BATCH_BITS = 64
_CHALLENGE_MASK = (1 << CHALLENGE_BITS) - 1
CHALLENGE_BYTES = CHALLENGE_BITS // 8


class InvalidProof(ValueError):
    """A party's ciphertexts whose proof is missing, malformed or false; names party and column."""

    def __init__(self, party: str, message: str, column: int | None = None) -> None:
        where = f"party {party!r}" + (f", column {column}" if column is not None else "")
        super().__init__(f"Rejected {where}: {message}")
        self.party = party
        self.column = column


@dataclass(frozen=True)
class ProofContext:
    """What a proof is bound to: the key id it is sent with, the keys digest of the model's
    encoding, and the party slot; a proof made for another of any of them does not verify."""

    key_id: str
    keys_digest: str
    party: str

    def to_bytes(self) -> bytes:
        return "\0".join(("paillier-thermometer-v1", self.key_id, self.keys_digest, self.party)).encode()


@dataclass
class ColumnProof:
    """One column's OR-proof: per branch i = 0..k a commitment a_i, a challenge share e_i and a
    response z_i (the shares sum to the Fiat-Shamir challenge modulo 2^128)."""

    commitments: list
    challenges: list
    responses: list


def _hash(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _int_bytes(value, size: int) -> bytes:
    return int(value).to_bytes(size, "big")


def transcript_seed(context: ProofContext, n: int, packed_ciphertexts: bytes) -> bytes:
    """The hash every weight and challenge of one party's proof is derived from."""
    return _hash(context.to_bytes(), format(n, "x").encode(), packed_ciphertexts)


def column_weights(seed: bytes, column: int, k: int) -> list:
    """gamma_1..gamma_k of a column: 128-bit weights from the transcript seed."""
    return [
        gmpy2.mpz(int.from_bytes(_hash(seed, b"gamma", column.to_bytes(4, "big"), j.to_bytes(4, "big"))[:16]))
        for j in range(k)
    ]


def level_sums(weights: list) -> list:
    """s_0..s_k: the plaintext of C for each of the k + 1 thermometer patterns."""
    sums, total = [gmpy2.mpz(0)], gmpy2.mpz(0)
    for weight in weights:
        total += weight
        sums.append(total)
    return sums


def column_challenge(seed: bytes, column: int, commitments: list, width: int) -> int:
    """The Fiat-Shamir challenge of a column's OR-proof (128 bits)."""
    data = b"".join(_int_bytes(a, width) for a in commitments)
    return int.from_bytes(_hash(seed, b"challenge", column.to_bytes(4, "big"), data)[:CHALLENGE_BYTES])


def _g_power(x, n, nsquare):
    """g^x mod n^2 for g = n + 1: 1 + x n (the binomial series stops at n^2)."""
    return (1 + (x % n) * n) % nsquare


def combined(ciphertexts: list, weights: list, nsquare):
    """C = prod c_j^gamma_j mod n^2."""
    total = gmpy2.mpz(1)
    for c, weight in zip(ciphertexts, weights):
        total = total * gmpy2.powmod(c, weight, nsquare) % nsquare
    return total


# --- the prover ---------------------------------------------------------------------------------


class NthPowers:
    """r^n mod n^2 for many random r at once, on two threads (gmpy2 releases the GIL in
    powmod_base_list). With the private key, by CRT: modulo p^2, x^n is the element of order
    dividing p - 1 that is congruent to x^n modulo p, i.e. (x^(n mod (p-1)) mod p)^p mod p^2 (the
    same for q): two half-length exponents instead of one of n's length (about 3x in all)."""

    def __init__(self, n: int, p: int | None = None, q: int | None = None) -> None:
        self.n, self.nsquare = gmpy2.mpz(n), gmpy2.mpz(n) ** 2
        self._primes = None
        if p is not None and q is not None:
            p, q = gmpy2.mpz(p), gmpy2.mpz(q)
            self._primes = (p, q, gmpy2.invert(q * q, p * p))

    def __call__(self, roots: list) -> list:
        if not roots:
            return []
        if self._primes is None:
            return threaded(roots, lambda part: gmpy2.powmod_base_list(part, self.n, self.nsquare))
        p, q, q2_inverse = self._primes
        mod_p, mod_q = self._modulo_prime_square(roots, p), self._modulo_prime_square(roots, q)
        p2, q2 = p * p, q * q
        return [rq + q2 * (((rp - rq) * q2_inverse) % p2) for rp, rq in zip(mod_p, mod_q)]

    def _modulo_prime_square(self, roots: list, prime) -> list:
        """Each root^n mod prime^2 (the class docstring)."""
        exponent, square = self.n % (prime - 1), prime * prime

        def work(part: list) -> list:
            return gmpy2.powmod_base_list(gmpy2.powmod_base_list(part, exponent, prime), prime, square)

        return threaded([r % prime for r in roots], work)


def threaded(items: list, work) -> list:
    """work(items) split over two threads (the machine's cores; gmpy2 releases the GIL)."""
    if len(items) < 8:
        return list(work(items))
    half = len(items) // 2
    result: list = []
    thread = threading.Thread(target=lambda: result.extend(work(items[half:])))
    thread.start()
    first = list(work(items[:half]))
    thread.join()
    return first + result


def random_unit(n) -> gmpy2.mpz:
    """A uniformly random element of Z*_n (a non-unit would factor n: not met in practice)."""
    while True:
        r = gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1)
        if gmpy2.gcd(r, n) == 1:
            return r


def encrypt_and_prove(n: int, bits, column_sizes: list[int], context: ProofContext, private=None):
    """(ciphertexts, one ColumnProof per column) for a party's thermometer bits (column after
    column, `column_sizes` bits each). `private`: (p, q) of the key pair, if the prover holds it."""
    n = gmpy2.mpz(n)
    nsquare = n * n
    bits = [int(b) for b in bits]
    if sum(column_sizes) != len(bits):
        raise ValueError(f"{len(bits)} bits for columns of {sum(column_sizes)} bits.")
    roots = [random_unit(n) for _ in range(len(bits) + sum(k + 1 for k in column_sizes))]
    powers = NthPowers(n, *(private or (None, None)))(roots)
    r, r_n = roots[: len(bits)], powers[: len(bits)]
    ciphertexts = [(1 + b * n) * rn % nsquare for b, rn in zip(bits, r_n)]
    width = _widths(n)[1]
    seed = transcript_seed(context, int(n), b"".join(_int_bytes(c, width) for c in ciphertexts))
    proofs, start, spare = [], 0, len(bits)
    for column, k in enumerate(column_sizes):
        column_bits = bits[start : start + k]
        level = sum(column_bits)
        if column_bits != [1] * level + [0] * (k - level):
            raise ValueError(f"Column {column}'s bits {column_bits} are not a thermometer code.")
        weights = column_weights(seed, column, k)
        witness = gmpy2.mpz(1)  # R with C = g^(s_level) R^n
        for root, weight in zip(r[start : start + k], weights):
            witness = witness * gmpy2.powmod(root, weight, n) % n
        C = combined(ciphertexts[start : start + k], weights, nsquare)
        sums = level_sums(weights)
        branch_roots, branch_powers = roots[spare : spare + k + 1], powers[spare : spare + k + 1]
        proofs.append(
            _or_proof(n, nsquare, C, sums, level, witness, branch_roots, branch_powers, seed, column)
        )
        start, spare = start + k, spare + k + 1
    return ciphertexts, proofs


def _or_proof(n, nsquare, C, sums, level, witness, roots, powers, seed, column) -> ColumnProof:
    """The OR-proof that C / g^(s_i) is an n-th residue for some i (the prover knows it for
    i = level, with n-th root `witness`); roots/powers: k + 1 fresh r and r^n."""
    width = _widths(n)[1]
    count = len(sums)
    commitments, challenges, responses = [None] * count, [0] * count, [None] * count
    for i in range(count):
        if i == level:
            commitments[i] = powers[i]  # a = s^n, s = roots[i]
            continue
        challenges[i] = secrets.randbits(CHALLENGE_BITS)
        responses[i] = roots[i]
        statement = C * _g_power(-sums[i], n, nsquare) % nsquare
        commitments[i] = (
            powers[i] * gmpy2.invert(gmpy2.powmod(statement, challenges[i], nsquare), nsquare) % nsquare
        )
    challenge = column_challenge(seed, column, commitments, width)
    challenges[level] = (challenge - sum(challenges)) & _CHALLENGE_MASK
    responses[level] = roots[level] * gmpy2.powmod(witness, challenges[level], n) % n
    return ColumnProof(commitments, challenges, responses)


# --- the wire format ----------------------------------------------------------------------------


def _widths(n: int) -> tuple[int, int]:
    """Bytes of a response (an element of Z_n) and of a commitment (of Z_(n^2))."""
    return (n.bit_length() + 7) // 8, ((n * n).bit_length() + 7) // 8


def proof_bytes(column_sizes: list[int], n: int) -> int:
    """Bytes of a party's proofs: per branch a commitment (n^2), a challenge, a response (n)."""
    n_width, n2_width = _widths(n)
    return sum(k + 1 for k in column_sizes) * (n2_width + CHALLENGE_BYTES + n_width)


def pack_proofs(proofs: list[ColumnProof], n: int) -> bytes:
    """ColumnProofs on the wire: per branch its commitment, challenge share and response."""
    n_width, n2_width = _widths(n)
    out = []
    for proof in proofs:
        for a, e, z in zip(proof.commitments, proof.challenges, proof.responses):
            out += [_int_bytes(a, n2_width), _int_bytes(e, CHALLENGE_BYTES), _int_bytes(z, n_width)]
    return b"".join(out)


def unpack_proofs(data: bytes, column_sizes: list[int], n: int, party: str) -> list[ColumnProof]:
    """ColumnProofs from untrusted bytes (their length checked by the caller); InvalidProof for a
    value out of range."""
    n_width, n2_width = _widths(n)
    nsquare, offset, proofs = n * n, 0, []
    for column, k in enumerate(column_sizes):
        commitments, challenges, responses = [], [], []
        for _ in range(k + 1):
            a = gmpy2.mpz(int.from_bytes(data[offset : offset + n2_width], "big"))
            offset += n2_width
            e = int.from_bytes(data[offset : offset + CHALLENGE_BYTES], "big")
            offset += CHALLENGE_BYTES
            z = gmpy2.mpz(int.from_bytes(data[offset : offset + n_width], "big"))
            offset += n_width
            if not (0 < a < nsquare and 0 < z < n):
                raise InvalidProof(party, "a proof value lies outside Z_(n^2) or Z_n.", column)
            commitments.append(a)
            challenges.append(e)
            responses.append(z)
        proofs.append(ColumnProof(commitments, challenges, responses))
    return proofs


# --- the verifier -------------------------------------------------------------------------------


def verify(
    n: int, ciphertexts: list, packed_ciphertexts: bytes, proofs: list[ColumnProof], column_sizes, context
):
    """InvalidProof naming the first bad column unless every column's proof holds."""
    n = gmpy2.mpz(n)
    nsquare = n * n
    width = _widths(n)[1]
    seed = transcript_seed(context, int(n), packed_ciphertexts)
    equations, start = [], 0
    for column, (k, proof) in enumerate(zip(column_sizes, proofs)):
        challenge = column_challenge(seed, column, proof.commitments, width)
        if sum(proof.challenges) & _CHALLENGE_MASK != challenge:
            raise InvalidProof(context.party, "the proof's challenges do not match its transcript.", column)
        weights = column_weights(seed, column, k)
        equations.append((ciphertexts[start : start + k], weights, level_sums(weights), proof))
        start += k
    if _batch_holds(n, nsquare, equations):
        return
    for column, equation in enumerate(equations):
        if not _batch_holds(n, nsquare, [equation]):
            raise InvalidProof(
                context.party,
                "its ciphertexts are not a thermometer code of 0/1 bits (the proof fails).",
                column,
            )
    raise InvalidProof(context.party, "the proofs do not hold together.")  # unreachable but for 2^-64


def _batch_holds(n, nsquare, equations) -> bool:
    """One small-exponent test over every branch of `equations` (module docstring)."""
    left, right, g_exponent = [], [], gmpy2.mpz(0)
    for ciphertexts, weights, sums, proof in equations:
        column_exponent = gmpy2.mpz(0)
        for a, e, z, s in zip(proof.commitments, proof.challenges, proof.responses, sums):
            weight = gmpy2.mpz(secrets.randbits(BATCH_BITS) | 1)
            left.append((z, weight))
            right.append((a, weight))
            column_exponent += e * weight
            g_exponent += s * e * weight
        right.extend((c, gamma * column_exponent) for c, gamma in zip(ciphertexts, weights))
    lhs = gmpy2.powmod(multi_power(left, nsquare), n, nsquare)
    rhs = multi_power(right, nsquare) * _g_power(-g_exponent, n, nsquare) % nsquare
    return lhs == rhs


def multi_power(pairs: list, modulus) -> gmpy2.mpz:
    """prod base^exponent mod `modulus` (non-negative exponents) by Pippenger's bucket method:
    one squaring chain for all, about (bits / w) multiplications per base."""
    if not pairs:
        return gmpy2.mpz(1)
    bits = max(int(e).bit_length() for _, e in pairs)
    window = 3 if len(pairs) < 16 else 4 if len(pairs) < 64 else 5 if len(pairs) < 512 else 6
    mask = (1 << window) - 1
    total = gmpy2.mpz(1)
    for shift in range(((bits + window - 1) // window - 1) * window, -1, -window):
        for _ in range(window):
            total = total * total % modulus
        buckets: list = [None] * (mask + 1)
        for base, exponent in pairs:
            digit = int((exponent >> shift) & mask)
            if digit:
                bucket = buckets[digit]
                buckets[digit] = base if bucket is None else bucket * base % modulus
        running, window_total = None, None
        for digit in range(mask, 0, -1):
            if buckets[digit] is not None:
                running = buckets[digit] if running is None else running * buckets[digit] % modulus
            if running is not None:
                window_total = running if window_total is None else window_total * running % modulus
        if window_total is not None:
            total = total * window_total % modulus
    return total
