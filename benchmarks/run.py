"""The benchmark suite of dcnv2_mx: ``python benchmarks/run.py [--model] [--plot out.png]
[--repeat N] [--cases a,b] [--quick] [--ctx cpu|gpu]``, the same as ``python -m dcnv2_mx bench``.

Set OMP_NUM_THREADS to the thread count to measure (the published table uses 2).
"""
import sys

from dcnv2_mx.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
