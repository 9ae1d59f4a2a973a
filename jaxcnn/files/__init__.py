"""The files layer: the workdir and what a run writes there (metrics, checkpoints, certificate)."""
