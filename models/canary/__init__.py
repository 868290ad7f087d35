"""The canary: a frozen, deliberately simple model that scores every request so that its
outputs can be watched for drift. No Kafka or HTTP here.

It is a lexicon: the share of a text's words found in a fixed vocabulary (the most
frequent words of CLINC150's in-scope training queries, ``vocab.txt``, built once with
``python -m models.canary build``). In-scope traffic covers ~0.9 of its words; traffic
from elsewhere covers less, and a shift in that share is what the drift report sees.
"""

from models.canary.lexicon import Lexicon, words

__all__ = ["Lexicon", "words"]
