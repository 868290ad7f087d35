"""The OpenAI-compatible API: chat completions (routes, wire schemas, streamed
completions, parameter rules, structured outputs and tool calls), legacy completions
and embeddings."""
