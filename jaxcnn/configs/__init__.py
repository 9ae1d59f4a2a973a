"""The preset configs, one module per preset: `jaxcnn train --config NAME` loads `NAME.py` from here.

They ship inside the package, so an installed jaxcnn (a wheel, `pip install .`) has them; the
repository's top-level `configs/` holds one-line mirrors of them for `--config configs/NAME.py`.
"""
