"""The training layer: the loop (a table of contents) and its host-side bookkeeping."""
