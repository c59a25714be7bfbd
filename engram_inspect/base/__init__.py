"""What every room of engram_inspect uses: `activations`, the one pass that reads a model's
hooks over windows of tokens (gates, rows, outputs), and `cache`, where data derived from a
checkpoint lives (ENGRAM_CACHE, keyed by the checkpoint; only shipped files beside the weights).

Imports `engram_core` only: no other room.
"""
