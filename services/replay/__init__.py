"""Replay: archived requests sent again into the requests stream under a replay mark, so a
new challenger can be judged on past traffic (``rdv replay``). Replayed requests carry
the attributes of the message contract (services.common.messages: ``REPLAY``,
``REPLAY_OF``, ``REPLAY_MODEL``); the rendezvous records their decisions but never sends
a reply, so no live client is answered."""

MARK_MAX = 64
"""The longest replay mark: the mark, a colon and an original id make a replayed id."""
