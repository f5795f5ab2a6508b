"""Bearer tokens: the parties' (ANONYMIZER_PARTY_TOKENS) and the operator's admin token for `/fit`
and `/evaluate` (ANONYMIZER_ADMIN_TOKEN); only their fingerprints are kept. A party token whose
name is a party's name of the served layout binds that party's slot (see `http.access`)."""

import hashlib
import hmac
import json
import re
from pathlib import Path


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PartyTokens:
    """Bearer tokens that may use `/fhe/*` and encrypted `/predict`; only their hashes are kept."""

    def __init__(self, tokens_by_name: dict[str, str]) -> None:
        self._names = {_fingerprint(token): name for name, token in tokens_by_name.items()}

    @classmethod
    def parse(cls, text: str) -> "PartyTokens":
        """A JSON object {name: token}, or tokens separated by commas or whitespace."""
        text = text.strip()
        if text.startswith("{"):
            named = json.loads(text)
            if not all(isinstance(v, str) and v for v in named.values()):
                raise ValueError("ANONYMIZER_PARTY_TOKENS: every token must be a non-empty string")
        else:
            named = {f"party-{i + 1}": token for i, token in enumerate(re.split(r"[\s,]+", text)) if token}
        if not named:
            raise ValueError("ANONYMIZER_PARTY_TOKENS holds no token")
        if any(len(token) < 16 for token in named.values()):
            raise ValueError("ANONYMIZER_PARTY_TOKENS: tokens need at least 16 characters")
        return cls(named)

    @classmethod
    def from_env(cls, environ) -> "PartyTokens | None":
        """ANONYMIZER_PARTY_TOKENS, else the file named by ANONYMIZER_PARTY_TOKENS_FILE, else None."""
        text = environ.get("ANONYMIZER_PARTY_TOKENS", "").strip()
        path = environ.get("ANONYMIZER_PARTY_TOKENS_FILE", "").strip()
        if not text and path:
            text = Path(path).read_text()
        return cls.parse(text) if text else None

    @property
    def names(self) -> frozenset[str]:
        """The tokens' names; one that is a party's name binds that party's slot to its token."""
        return frozenset(self._names.values())

    def identify(self, token: str) -> tuple[str, str] | None:
        """(owner id, name) of a presented token (the id is a hash, never the token), or None if
        it is unknown."""
        fingerprint = _fingerprint(token)
        found = None
        for known, name in self._names.items():
            if hmac.compare_digest(known, fingerprint):  # no early exit: every token is compared
                found = (f"token:{known[:16]}", name)
        return found

    def owner(self, token: str) -> str | None:
        """The owner id of a presented token (a hash, never the token), or None if it is unknown."""
        identified = self.identify(token)
        return identified[0] if identified else None


class AdminToken:
    """The operator's bearer token for `/fit` and `/evaluate` (off by default: AnoMed's platform
    calls them bare); only its fingerprint is kept."""

    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ValueError("ANONYMIZER_ADMIN_TOKEN needs at least 16 characters")
        self._fingerprint = _fingerprint(token)

    @classmethod
    def from_env(cls, environ) -> "AdminToken | None":
        """ANONYMIZER_ADMIN_TOKEN, else the file named by ANONYMIZER_ADMIN_TOKEN_FILE, else None."""
        text = environ.get("ANONYMIZER_ADMIN_TOKEN", "").strip()
        path = environ.get("ANONYMIZER_ADMIN_TOKEN_FILE", "").strip()
        if not text and path:
            text = Path(path).read_text().strip()
        return cls(text) if text else None

    def admits(self, authorization: str | None) -> bool:
        """Whether an Authorization header presents this token."""
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            _fingerprint(token.strip()), self._fingerprint
        )
