"""Replay: archived requests sent again into the requests stream under a replay mark, so a
new challenger can be judged on past traffic (``rdv replay``). Replayed requests carry
the attributes ``replay`` (the mark), ``replay_of`` (the original request id) and,
optionally, ``replay_model`` (only that model scores them); the rendezvous records
their decisions but never sends a reply, so no live client is answered."""

REPLAY = "replay"
REPLAY_OF = "replay_of"
REPLAY_MODEL = "replay_model"

MARK_MAX = 64
"""The longest replay mark: the mark, a colon and an original id make a replayed id."""
