"""Same as `jaxcnn train`: python scripts/train.py [--config FILE] [--workdir DIR] [--config.KEY=VALUE ...]"""

import sys

from jaxcnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
