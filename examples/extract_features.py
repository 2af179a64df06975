"""Features of a folder (or list) of images, written as resumable numpy shards.

The same as `keras-dino extract-features`: the code lives in `keras_dino/tools/extract_features.py`, whose
docstring (`--help`) explains the flags. Run from a clone, this script uses the clone's
keras_dino.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_dino.tools.common import select_backend

    select_backend(sys.argv)  # before anything imports Keras
    from keras_dino.tools.extract_features import main

    main()
