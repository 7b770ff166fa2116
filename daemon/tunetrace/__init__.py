"""tunetrace: recognise catalog recordings in live audio and publish stable now-playing decisions.

The package reads like the data flows::

    sources -> ringbuffer -> encoders -> store -> voting -> tracker -> publish
                                  \\-> catalog (ingest) / identify (one-shot) / evaluation

``pipeline`` wires one station, ``service`` runs them all (signals, systemd, ordered shutdown),
``cli`` is on top; ``audio`` (decode, windows, features, resampling) is shared by every stage, and
the values and policy every stage shares are ``errors``, ``config``, ``events`` and ``backoff``.
"""

import os as _os

# Before NumPy loads: its OpenBLAS otherwise starts a thread per core that spin-waits between calls.
# tunetrace's matrices are small (a station's half-second batch of windows) and its parallelism is
# across stations, so those threads only burn CPU: the log-mel front end of a 5-window batch took
# 7.6 ms of CPU with the default pool and 1.1 ms with one thread (docs/benchmarks.md).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
