"""A malicious Paillier applicant, for tests and `make extraction`: it holds the private key and
encrypts what the protocol forbids (powers of B, non-bits, non-monotone bits), forging the best
proofs it can, and reads the co-parties' points out of one answer where the server lets it."""

import gmpy2

from anonymizer.engines.paillier import proofs, scheme

B = 1 << 270  # far above rho * score: one answer's base-B digits separate the positions


def forged(public_key, plaintexts: list[int], sizes: list[int], context) -> tuple[list, list]:
    """(ciphertexts of any plaintexts, per column the honest prover's OR-proof claiming the level
    nearest them): what a prover can send; it verifies iff the plaintexts are thermometer codes."""
    n, nsquare = gmpy2.mpz(public_key.n), gmpy2.mpz(public_key.nsquare)
    roots = [proofs.random_unit(n) for _ in plaintexts]
    ciphertexts = [
        (1 + (m % n) * n) * gmpy2.powmod(r, n, nsquare) % nsquare for m, r in zip(plaintexts, roots)
    ]
    seed = proofs.transcript_seed(context, int(n), scheme.pack(public_key, ciphertexts))
    column_proofs, start = [], 0
    for column, k in enumerate(sizes):
        weights = proofs.column_weights(seed, column, k)
        witness = gmpy2.mpz(1)
        for root, weight in zip(roots[start : start + k], weights):
            witness = witness * gmpy2.powmod(root, weight, n) % n
        combined = proofs.combined(ciphertexts[start : start + k], weights, nsquare)
        claimed = min(k, sum(1 for m in plaintexts[start : start + k] if m))
        branch_roots = [proofs.random_unit(n) for _ in range(k + 1)]
        powers = [gmpy2.powmod(r, n, nsquare) for r in branch_roots]
        sums = proofs.level_sums(weights)
        column_proofs.append(
            proofs._or_proof(n, nsquare, combined, sums, claimed, witness, branch_roots, powers, seed, column)
        )
        start += k
    return ciphertexts, column_proofs


def forged_part(public_key, plaintexts: list[int], sizes: list[int], context) -> bytes:
    """A party's part on the wire (ciphertexts, then proofs) for any plaintexts."""
    ciphertexts, column_proofs = forged(public_key, plaintexts, sizes, context)
    return scheme.pack(public_key, ciphertexts) + proofs.pack_proofs(column_proofs, public_key.n)


def read_powers_of_b(value: int, positions: int) -> tuple[int, list[int]] | None:
    """From one decrypted answer rho * (o + sum_i w_i B^(i+1)) + e, e in (-rho, 0]: (o, [w_i]),
    or None when the digits do not give rho (every w_i zero)."""
    digits = []
    for _ in range(positions + 1):
        digit = value % B
        if digit > B // 2:
            digit -= B
        digits.append(digit)
        value = (value - digit) // B
    rho = 0
    for digit in digits[1:]:
        rho = int(gmpy2.gcd(rho, digit))
    if rho == 0:
        return None
    low = -(-digits[0] // rho)  # ceil(d_0 / rho): e only lowers d_0, by less than rho
    return low, [d // rho for d in digits[1:]]
