"""The party SDK: what a data holder installs (`pip install '.[party]'`) to take part."""

from .client import PartyClient, ProtocolError

__all__ = ["PartyClient", "ProtocolError"]
