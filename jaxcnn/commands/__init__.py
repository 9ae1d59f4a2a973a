"""The commands layer: what runs on a finished run (eval, predict, export, verify, compare)."""
