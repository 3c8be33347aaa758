"""Benchmark entry point: ``python benchmarks/run.py --backbone vit_b --size 256 --tuner lora conv_lora``.

Same as ``medsam-peft bench``; see ``medsam_peft/benchmark.py`` for what is measured.
"""

import sys

from medsam_peft.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
