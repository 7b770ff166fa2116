"""tunetrace: recognise catalog recordings in live audio and publish stable now-playing decisions.

The package reads like the data flows::

    sources -> ringbuffer -> encoders -> store -> matcher -> tracker -> publisher
                                 \\-> catalog (ingest) / identify (one-shot) / evaluation

with ``service`` wiring the live pipeline and ``cli`` on top.
"""

__version__ = "0.1.0"
