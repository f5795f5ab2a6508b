"""Encrypted multi-party credit scorer for the AnoMed platform: a concrete-ml tree served over HTTP."""
