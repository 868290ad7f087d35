"""The control plane: the model registry and the endpoint policies as data on the
compacted control topic, what reads and writes it, and the deployers that run models.

Keys on the control topic:

- ``model/<name>``: the model's latest ModelRegistration (a tombstone once retired);
- ``policy/<endpoint>``: the endpoint's policy in force (PolicyEntry, its version);
- ``policy-version/<endpoint>/<version>``: every version ever set, kept for history and
  rollback (distinct keys survive compaction).

The rendezvous and the gateway follow the topic live (services.control.follower):
policies set here replace the files' policies of the same endpoint at the next
decision, without a restart.
"""
