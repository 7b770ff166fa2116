"""Voting: nearest-neighbour hits in, the time-consistent track, position and confidence out.

``vote``/``decisive`` rank a batch of hits (one-shot identification and the evaluation);
``HorizonVoter`` votes over a live stream's sliding horizon; ``batcher.RecognitionBatcher`` embeds and
searches every station's due windows in one call per tick and hands each voter its own hits.
Pure computation over the values in ``tunetrace.store.base``: importing this package loads no
Milvus client.
"""

from tunetrace.voting.horizon import HorizonParams, HorizonVoter, horizon_params
from tunetrace.voting.vote import Candidate, VotingParams, decisive, vote

__all__ = ["Candidate", "HorizonParams", "HorizonVoter", "VotingParams", "decisive", "horizon_params", "vote"]
