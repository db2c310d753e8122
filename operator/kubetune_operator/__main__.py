"""`python -m kubetune_operator` runs the operator, like `kubetune run`."""

import sys

from kubetune_operator.main import run_operator

run_operator(sys.argv[1:])
