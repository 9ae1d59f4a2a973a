"""The core layer: spec -> model, optimizer, loss and state (build), pure steps, the executor, metrics."""
