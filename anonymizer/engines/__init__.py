"""The FHE engines behind one contract (base.py), by name in registry.py."""
