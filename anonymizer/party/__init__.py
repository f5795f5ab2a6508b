"""The party SDK: what a data holder installs (`pip install '.[party]'`) to take part."""

from .client import ModelChanged, PartyClient, ProtocolError

__all__ = ["ModelChanged", "PartyClient", "ProtocolError"]
