"""Model workers: the generic runtime that serves one model on the request stream.

``python -m services.workers --model SPEC`` runs one. The pieces:

- ``runtime``: the interface a model implements (load, predict_batch, unload, ready)
  and the registry of runtime names;
- ``testmodels``: echo, latency and failing models for demos and benchmarks;
- ``spec``: the model spec (YAML file or inline ``runtime:key=value,...``);
- ``worker``: the stream processor that micro-batches requests into scores;
- ``service``: the worker process's parts wired together; ``__main__``: the command.
"""
