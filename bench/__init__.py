"""Benchmarks (`make bench`, `make datasets`, `make extraction`, `make soak` and the modules run alone)."""

# load benchmarks send thousands of decisions from a few keys: no decision budget there
UNLIMITED_DECISIONS = {"ANONYMIZER_DECISIONS_PER_KEY": "0", "ANONYMIZER_DECISIONS_PER_OWNER": "0"}
