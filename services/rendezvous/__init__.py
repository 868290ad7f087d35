"""The rendezvous: opens a mailbox per request, fills it with scores, answers by policy."""
