"""The concrete-ml engine (FHE_ENGINE=concrete-ml), the baseline; needs concrete-ml."""
