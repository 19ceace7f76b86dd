"""socktop: a live terminal monitor of the machine's TCP sockets."""

import os

__version__ = "0.1.0"

# numpy starts its BLAS with a thread per core; socktop does no linear algebra, and one
# thread makes `import numpy` about 50 ms faster (a one-shot `socktop --json` pays it every time)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
