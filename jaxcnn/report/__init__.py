"""The report layer: `jaxcnn report`'s figures and report.md."""
