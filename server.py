"""Run Calo Jobs: `python server.py --help` lists every setting. Same as `calo-server`."""

import sys

from calo.cli import main

if __name__ == "__main__":
    sys.exit(main())
