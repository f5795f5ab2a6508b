"""The party's own check of the TFHE parameters the server serves, before it makes keys with them.

Under TFHE the parties' secret keys are generated from the client specs that `GET /fhe/specs`
serves. A server that served a tiny LWE dimension, or noise below what that dimension needs,
would get evaluation keys (and ciphertexts) from which the secret key, and so every value, can be
recovered. `check_client_specs` reads every secret key's dimension and the noise of everything
encrypted under it (bootstrap keys, keyswitch keys, packing keyswitch keys, the client's fresh
input encryptions) from concrete's `fhe.ClientSpecs` and refuses what falls below concrete's own
128-bit security curve for a 64-bit ciphertext modulus.

The curve is concrete's: zama-ai/concrete, concrete-security-curves-rust/src/curves.gen.rs
(128 bits: slope -0.026405028765226296, bias 2.482642269104389, minimal LWE dimension 450,
generated with the lattice-estimator), applied as its `SecurityWeights::secure_log2_std` and
`minimal_variance_glwe` do (concrete-security-curves-rust/src/gaussian/security.rs): for an
(equivalent) LWE dimension n >= 450 the smallest secure standard deviation on the torus is
2^max(slope * n + bias, 2 - 64); below 450 no noise is secure. A GLWE key of dimension k and
polynomial size N counts as an LWE key of dimension k * N.
"""

import json
import math

SECURITY_BITS = 128
CIPHERTEXT_MODULUS_LOG = 64
CURVE_SLOPE = -0.026405028765226296
CURVE_BIAS = 2.482642269104389
MINIMAL_LWE_DIMENSION = 450
# concrete computes the same bound in f64; a relative slack far below any real parameter step
_SLACK = 1e-9


class InsecureParameters(ValueError):
    """Served client specs whose secret keys would have less than 128-bit security."""


def minimal_variance(lwe_dimension: int) -> float:
    """The smallest torus noise variance with 128-bit security for an LWE secret of this
    (equivalent) dimension, 64-bit ciphertext modulus; inf below the curve's minimal dimension."""
    if lwe_dimension < MINIMAL_LWE_DIMENSION:
        return math.inf
    log2_std = max(CURVE_SLOPE * lwe_dimension + CURVE_BIAS, 2.0 - CIPHERTEXT_MODULUS_LOG)
    return 2.0 ** (2.0 * log2_std)


def _noise_ok(variance: float, lwe_dimension: int) -> bool:
    return variance >= minimal_variance(lwe_dimension) * (1 - _SLACK)


def _secret_key_documents(program_info) -> list[dict]:
    """Each secret key's JSON parameters (key type, precision), which the Python API omits."""
    try:
        return json.loads(program_info.serialize())["keyset"]["lweSecretKeys"]
    except (ValueError, KeyError, TypeError) as error:
        raise InsecureParameters(f"Cannot read the served secret keys' parameters ({error}).") from None


def check_client_specs(client_specs) -> None:
    """InsecureParameters naming the first problem, unless every secret key of these
    `fhe.ClientSpecs` and everything encrypted under it has 128-bit security."""
    program_info = client_specs.program_info
    keyset = program_info.get_keyset_info()
    dimensions = [key.dimension() for key in keyset.secret_keys()]
    documents = {
        document.get("id"): document.get("params", {}) for document in _secret_key_documents(program_info)
    }
    if not dimensions:
        raise InsecureParameters("The served client specs name no secret key.")

    def refuse(what: str, dimension: int, variance: float | None = None) -> None:
        noise = "" if variance is None else f" with noise variance {variance:.3g}"
        needed = minimal_variance(dimension)
        bound = (
            f"a dimension of at least {MINIMAL_LWE_DIMENSION}"
            if math.isinf(needed)
            else f"a noise variance of at least {needed:.3g} at that dimension"
        )
        raise InsecureParameters(
            f"The server's client specs are not secure: {what} has LWE dimension {dimension}{noise}; "
            f"{SECURITY_BITS}-bit security (concrete's curve, 64-bit modulus) needs {bound}. "
            "No keys were made: do not use this server."
        )

    for key_id, dimension in enumerate(dimensions):
        params = documents.get(key_id, {})
        if params.get("keyType", "binary") != "binary" or params.get("integerPrecision", 64) != 64:
            raise InsecureParameters(
                f"Secret key {key_id} is not a binary key over 64-bit integers ({params}): "
                "the security curve checked here does not apply. No keys were made."
            )
        if math.isinf(minimal_variance(dimension)):
            refuse(f"secret key {key_id}", dimension)

    def key_dimension(key_id: int) -> int:
        if not 0 <= key_id < len(dimensions):
            raise InsecureParameters(f"The served client specs name an unknown secret key {key_id}.")
        return dimensions[key_id]

    for key in keyset.bootstrap_keys():
        glwe = key.glwe_dimension() * key.polynomial_size()
        if glwe != key_dimension(key.output_secret_key_id()):
            raise InsecureParameters(
                f"A bootstrap key's GLWE key ({key.glwe_dimension()} x {key.polynomial_size()}) is not "
                f"secret key {key.output_secret_key_id()}. No keys were made."
            )
        if not _noise_ok(key.variance(), glwe):
            refuse(f"the bootstrap key under secret key {key.output_secret_key_id()}", glwe, key.variance())
    for key in keyset.keyswitch_keys():
        dimension = key_dimension(key.output_secret_key_id())
        if not _noise_ok(key.variance(), dimension):
            refuse(
                f"the keyswitch key under secret key {key.output_secret_key_id()}", dimension, key.variance()
            )
    for key in keyset.packing_keyswitch_keys():
        glwe = key.glwe_dimension() * key.polynomial_size()
        if not _noise_ok(key.variance(), glwe):
            refuse("a packing keyswitch key", glwe, key.variance())
    for function in program_info.function_list():
        inputs = program_info.get_circuit(function).get_inputs()
        for position, gate in enumerate(inputs):
            if gate.get_type_info().is_plaintext():
                continue
            key_id = program_info.input_keyid_at(position, function)
            variance = program_info.input_variance_at(position, function)
            if not _noise_ok(variance, key_dimension(key_id)):
                refuse(f"input {position} of {function!r} (encrypted by us)", key_dimension(key_id), variance)
