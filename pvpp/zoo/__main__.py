"""`python -m pvpp.zoo ...`: see `pvpp.zoo.cli`."""

import sys

from pvpp.zoo import cli

if __name__ == "__main__":
    sys.exit(cli.main())
