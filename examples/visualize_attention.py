"""Self-attention maps of the CLS token: the official visualize_attention.py, in Keras.

The same as `keras-dino visualize-attention`: the code lives in `keras_dino/tools/visualize_attention.py`, whose
docstring (`--help`) explains the flags. Run from a clone, this script uses the clone's
keras_dino.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_dino.tools.common import select_backend

    select_backend(sys.argv)  # before anything imports Keras
    from keras_dino.tools.visualize_attention import main

    main()
