"""The thermometer engine: threshold bits, leaf sums, one small lookup per block."""
