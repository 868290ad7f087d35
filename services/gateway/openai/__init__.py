"""The OpenAI-compatible chat API: its routes, wire schemas and streamed completions."""
