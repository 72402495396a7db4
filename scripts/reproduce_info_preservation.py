#!/usr/bin/env python
"""Reproduce Rippel et al. 2015 Fig. 4(a) on the 15 photographs in ../shared/data/photos.

    python scripts/reproduce_info_preservation.py [--photos DIR] [--out DIR]

Writes info_preservation.csv and info_preservation.png and prints the table. Runs offline in seconds.
"""
import argparse

from specnet_zoo.paths import shared_data_dir
from specnet_zoo.reproduce.info_preservation import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(shared_data_dir() / "photos"), help="folder of photographs")
    parser.add_argument("--out", default="outputs/info_preservation", help="where to write the CSV and PNG")
    args = parser.parse_args()
    run(args.photos, args.out)


if __name__ == "__main__":
    main()
