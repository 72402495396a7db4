#!/usr/bin/env python
"""Reproduce SpecNet (Guan et al. 2019) Fig. 3(a-c): relative training memory vs beta and vs density.

    python scripts/reproduce_specnet_memory.py [--out DIR] [--batch-size 64] [--table-batch-size 128]
                                               [--models specvgg16 ...] [--no-table]

Same as ``specnet-zoo reproduce specnet-memory``. For the four SpecNet/spatial pairs on real MNIST and
CIFAR-10 batches from ../shared/data, writes specnet_memory_sweep.csv and specnet_memory.png; then
measures vgg16_cifar and densenet_cifar at batch 128 against torch.utils.checkpoint and save_on_cpu
with the same harness (specnet_memory_comparison.csv) and prints both tables. About 12 minutes on
2 CPU cores (the comparison table runs profiled and timed steps at batch 128).
"""
import sys

from specnet_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "specnet-memory", *sys.argv[1:]]))
