"""`python -m scorer` and the `scorer` console script: the command-line program.

As a program (not as a library a notebook imports) it keeps numpy's OpenBLAS to one thread,
set before numpy is first imported (by `scorer.cli`'s imports): its threads spin after each
call, and `perf` put 1.7% of a 4,000-file job's CPU in them (driver and worker processes) on
2 cores, for matrix products of a few dozen weights. Ray's actors get one from Ray already
(`OMP_NUM_THREADS`); a value the user set is kept.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from scorer.cli import main  # after the environment above

if __name__ == "__main__":
    main()
