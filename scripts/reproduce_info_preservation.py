#!/usr/bin/env python
"""Reproduce Rippel et al. 2015 Fig. 4(a) on the 15 photographs in ../shared/data/photos.

    python scripts/reproduce_info_preservation.py [--photos DIR] [--out DIR]

Same as ``specnet-zoo reproduce info-preservation``. Writes info_preservation.csv and
info_preservation.png and prints the table. Runs offline in about 20 s on 2 CPU cores.
"""
import sys

from specnet_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "info-preservation", *sys.argv[1:]]))
