"""The Engram Inspector app: a thin Gradio layer over engram_inspect (one module per tab)."""
