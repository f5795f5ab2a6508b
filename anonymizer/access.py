"""Who is calling the encrypted protocol: a party token's owner, or else the client's address."""

import hashlib
import hmac
import json
import re
from pathlib import Path

import falcon

TRUSTED_PROXIES = ("127.0.0.1", "::1")  # nginx in the container; gunicorn listens on loopback only


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

    def owner(self, token: str) -> str | None:
        """The owner id of a presented token (a hash, never the token), or None if it is unknown."""
        fingerprint = _fingerprint(token)
        for known in self._names:
            if hmac.compare_digest(known, fingerprint):
                return f"token:{known[:16]}"
        return None


class Caller:
    """Resolves a request's owner id, enforcing bearer tokens when they are configured."""

    def __init__(self, tokens: PartyTokens | None) -> None:
        self.tokens = tokens

    @property
    def authenticates(self) -> bool:
        """Whether party tokens are configured (then keys are owned by tokens, not addresses)."""
        return self.tokens is not None

    def owner(self, req: falcon.Request) -> str:
        """The caller's owner id; 401 when tokens are configured and none valid is presented."""
        if self.tokens is None:
            return f"address:{client_address(req)}"
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        owner = self.tokens.owner(token.strip()) if scheme.lower() == "bearer" else None
        if owner is None:
            raise falcon.HTTPUnauthorized(
                title="Party token required",
                description="The encrypted protocol needs 'Authorization: Bearer <party token>'.",
                challenges=['Bearer realm="fhe"'],
            )
        return owner


def client_address(req: falcon.Request) -> str:
    """The client's address; behind our nginx (a loopback peer) the address nginx forwarded."""
    peer = req.remote_addr or "unknown"
    forwarded = req.get_header("X-Forwarded-For")
    if peer in TRUSTED_PROXIES and forwarded:
        return forwarded.split(",")[-1].strip()[:64]
    return peer
