"""Model workers: the generic runtime that serves one model on the request stream.

``python -m services.workers --model SPEC`` runs one (more ``--model`` flags co-host
several fast models on one consumer). The pieces:

- ``runtime``: the interface a model implements (load, predict_batch, unload, ready),
  resolved from the runtime names of services.common.runtimes (the model spec,
  services.common.spec, is a contract the control plane and the gateway share);
- ``testmodels``: echo, latency and failing models for demos and benchmarks;
- ``worker``: the stream processor that micro-batches requests into scores;
- ``cohost``: several models' processors on one consumer, each request read once;
- ``service``: the worker process's parts wired together; ``__main__``: the command.
"""
