"""The runtime layer: processes, stop signals, XLA compilation settings, determinism, host memory."""
