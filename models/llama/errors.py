"""The errors the LLaMA chat model raises on purpose, each with a stable ``code``.

``models/`` does not import ``services/``: the worker that adapts this model maps
these to the platform's error tree at its edge (a ``LlamaError`` raised for one
request becomes that request's ``PredictionError``; one raised while loading becomes
a ``ConfigError``).
"""

from __future__ import annotations


class LlamaError(Exception):
    """Base of every error this package raises on purpose."""

    code: str = "llama_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ModelNotFoundError(LlamaError):
    """The GGUF file or model folder named does not exist (or lacks its files)."""

    code = "model_not_found"


class UnsupportedArchitectureError(LlamaError):
    """The checkpoint is not a LLaMA-architecture causal language model."""

    code = "unsupported_architecture"


class CorruptCacheError(LlamaError):
    """A conversion-cache entry is incomplete or unreadable (it is rebuilt)."""

    code = "corrupt_cache"


class ModelLoadError(LlamaError):
    """A model folder or GGUF file that exists could not be read as a model."""

    code = "model_load_failed"


class InvalidRequestError(LlamaError):
    """Generation parameters or messages that cannot be used as given."""

    code = "invalid_request"


class PromptTooLongError(InvalidRequestError):
    """The prompt does not leave room for one generated token in the context window."""

    code = "prompt_too_long"

    def __init__(self, prompt_tokens: int, context_window: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens; the context window holds {context_window} "
            "(prompt plus at least one generated token)"
        )
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window


class RequestTooLargeError(InvalidRequestError):
    """prompt + max_tokens exceeds the engine's token budget: it could never be admitted."""

    code = "request_too_large"


class DecodeError(LlamaError):
    """The model runtime refused or failed a forward pass (the engine's state is then
    unknown: the caller resets it)."""

    code = "decode_failed"
