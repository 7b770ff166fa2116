"""tunetrace: recognise catalog recordings in live audio and publish stable now-playing decisions.

The package reads like the data flows::

    sources -> ringbuffer -> encoders -> store -> matcher -> tracker -> publisher
                                 \\-> catalog (ingest) / identify (one-shot) / evaluation

with ``service`` wiring the live pipeline and ``cli`` on top.
"""

import os as _os

# Before NumPy loads: its OpenBLAS otherwise starts a thread per core that spin-waits between calls.
# tunetrace's matrices are small (a station's half-second batch of windows) and its parallelism is
# across stations, so those threads only burn CPU: the log-mel front end of a 5-window batch took
# 7.6 ms of CPU with the default pool and 1.1 ms with one thread (docs/benchmarks.md).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
