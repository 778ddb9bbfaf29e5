"""Rank candidate captions for images with a trained model; the same as `contrastive rank`.

    python -m scripts.rank_captions --checkpoint runs/<run> --image img.jpg --captions "a red circle" "a blue square"
"""

import sys

from contrastive.cli import main

if __name__ == "__main__":
    sys.exit(main(["rank", *sys.argv[1:]]))
