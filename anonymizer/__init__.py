"""Encrypted multi-party credit scorer for the AnoMed platform, in layers: http -> service ->
engines / execution -> state, with the party SDK beside them (docs/architecture.md)."""
