"""Who is calling the encrypted protocol: a party token's owner, or else the client's address."""

import falcon

from .tokens import PartyTokens

TRUSTED_PROXIES = ("127.0.0.1", "::1")  # nginx in the container; gunicorn listens on loopback only


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
