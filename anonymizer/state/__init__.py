"""Everything under MODEL_DIR: sealed model versions, the key registry, staged inputs."""
