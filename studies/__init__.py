"""Studies that reproduce the Engram paper's findings in miniature (docs/paper-checks.md)."""
