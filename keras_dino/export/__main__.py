"""`python -m keras_dino.export <export dir>`: prints what an export is."""

import sys

from keras_dino.export.metadata import describe

if len(sys.argv) != 2:
    sys.exit("usage: python -m keras_dino.export <export dir>")
describe(sys.argv[1])
