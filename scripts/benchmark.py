"""Same as `jaxcnn bench`: python scripts/benchmark.py [--model NAME] [--mode MODE] [--json PATH] ..."""

import sys

from jaxcnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
