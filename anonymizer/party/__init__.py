"""The party SDK: what a data holder installs (`pip install '.[party]'`, or `'.[party-paillier]'`
for a Paillier server) to take part."""

from .client import ModelChanged, PartyClient, ProtocolError

__all__ = ["ModelChanged", "PartyClient", "ProtocolError"]
