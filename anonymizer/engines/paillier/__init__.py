"""The Paillier engine: additive models under the applicant's public key (ANONYMIZER_ENCRYPTION=paillier)."""
