"""Who is calling the encrypted protocol (a party token's owner, or else the client's address),
which parties' slots it may fill, and how many encrypted decisions it may still ask for."""

from collections.abc import Iterable
from dataclasses import dataclass

import falcon

from ..state.decisions import BudgetSpent, DecisionBudget, Spent
from ..tokens import PartyTokens
from ..wire import ErrorCode

TRUSTED_PROXIES = ("127.0.0.1", "::1")  # nginx in the container; gunicorn listens on loopback only


@dataclass(frozen=True)
class CallerIdentity:
    """A resolved caller: its owner id (`token:<hash>` or `address:<ip>`) and, when party tokens
    are configured, the name its token has in ANONYMIZER_PARTY_TOKENS."""

    owner: str
    token_name: str | None = None


class Caller:
    """Resolves a request's caller, enforcing bearer tokens when they are configured, the parties'
    slots bound to their tokens, and the decision budget."""

    def __init__(self, tokens: PartyTokens | None, decisions: DecisionBudget | None = None) -> None:
        self.tokens = tokens
        self.decisions = decisions

    @property
    def authenticates(self) -> bool:
        """Whether party tokens are configured (then keys are owned by tokens, not addresses)."""
        return self.tokens is not None

    def identify(self, req: falcon.Request) -> CallerIdentity:
        """The caller; 401 when tokens are configured and none valid is presented."""
        known = getattr(req.context, "caller", None)
        if known is not None:
            return known
        if self.tokens is None:
            identity = CallerIdentity(f"address:{client_address(req)}")
        else:
            scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
            identified = self.tokens.identify(token.strip()) if scheme.lower() == "bearer" else None
            if identified is None:
                raise falcon.HTTPUnauthorized(
                    title="Party token required",
                    description="The encrypted protocol needs 'Authorization: Bearer <party token>'.",
                    challenges=['Bearer realm="fhe"'],
                    code=ErrorCode.TOKEN_REQUIRED,
                )
            identity = CallerIdentity(*identified)
        req.context.caller = identity
        return identity

    def owner(self, req: falcon.Request) -> str:
        """The caller's owner id; 401 when tokens are configured and none valid is presented."""
        return self.identify(req).owner

    def check_slots(self, req: falcon.Request, parties: Iterable[str]) -> None:
        """403 unless the caller may fill every one of these parties' slots (staged or sent in
        /predict): a party whose name is also a token's name accepts its part only from that
        token; other parties (and every party without tokens) from any caller."""
        if self.tokens is None:
            return
        identity = self.identify(req)
        for party in parties:
            if party in self.tokens.names and identity.token_name != party:
                raise falcon.HTTPForbidden(
                    title="Not this party's slot",
                    description=f"Only the token named {party!r} may send or stage party {party!r}'s "
                    "ciphertext: each party encrypts its own columns.",
                    code=ErrorCode.NOT_YOUR_SLOT,
                )

    def check_budget(self, owner: str) -> None:
        """429 if the owner's encrypted decisions for this window are spent (before any body)."""
        if self.decisions is not None:
            try:
                self.decisions.check_owner(owner)
            except BudgetSpent as error:
                raise _budget_spent(error) from None

    def spend_decision(self, req: falcon.Request, key_id: str, owner: str, count: int = 1) -> None:
        """Take the `count` decisions the request shows from the key's and the owner's budgets
        (429 if either has fewer left); `RefundFailedDecisions` gives them back if it then fails."""
        if self.decisions is None:
            return
        try:
            req.context.decision = self.decisions.spend(key_id, owner, count)
        except BudgetSpent as error:
            raise _budget_spent(error) from None

    def refund_decision(self, spent: Spent | None) -> None:
        if self.decisions is not None:
            self.decisions.refund(spent)


def _budget_spent(error: BudgetSpent) -> falcon.HTTPError:
    return falcon.HTTPTooManyRequests(
        title="Decision budget spent",
        description=str(error),
        retry_after=error.retry_after,
        code=ErrorCode.BUDGET_SPENT,
    )


class RefundFailedDecisions:
    """Middleware: a request that took a decision from the budget (`Caller.spend_decision`) and
    then failed (an error, or any answer but 2xx) gives it back: bad input costs no decision."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        spent = getattr(req.context, "decision", None)
        if spent is not None and not (req_succeeded and 200 <= resp.status_code < 300):
            req.context.decision = None
            self._caller.refund_decision(spent)


def client_address(req: falcon.Request) -> str:
    """The client's address; behind our nginx (a loopback peer) the address nginx forwarded."""
    peer = req.remote_addr or "unknown"
    forwarded = req.get_header("X-Forwarded-For")
    if peer in TRUSTED_PROXIES and forwarded:
        return forwarded.split(",")[-1].strip()[:64]
    return peer
