"""`python -m keras_dino <tool> [flags]`: the same as `keras-dino <tool> [flags]`."""

import sys

from keras_dino.cli import main

sys.exit(main())
