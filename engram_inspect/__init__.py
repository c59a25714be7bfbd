"""engram_inspect: what the Engram memory does, as arrays and dataclasses.

Captures of one text, statistics over a corpus (collisions, memory health),
projections and nearest neighbours of memory rows, knock-out diffs and exports.
Pure analysis over `engram_core`: no Gradio, no globals.
"""
