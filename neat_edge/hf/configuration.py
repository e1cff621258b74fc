"""NeatHFConfig: a NeatConfig as a transformers PretrainedConfig (model_type "neat").

The NeatConfig stays the model's identity (fingerprints, saved states, bundles): this class only carries it
through transformers. It is read from, and written as, the project's own config.json (NeatConfig's fields at
the top level), so a checkpoint directory is a Hugging Face model directory and the other way round.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from transformers import GenerationConfig, PretrainedConfig

from neat_edge.config import BOS, EOS, PRESETS, NeatConfig
from neat_edge.fileio import atomic_write_bytes

NEAT_FIELDS = frozenset(f.name for f in dataclasses.fields(NeatConfig))
SPECIALS = list(range(256, 256 + 4))  # BOS, EOS, BOI, EOI: never sampled by a Session


class NeatHFConfig(PretrainedConfig):
    model_type = "neat"

    def __init__(self, neat: dict | None = None, **kwargs):
        # NeatConfig's fields arrive either nested (`neat`) or at the top level (the project's config.json)
        neat = dict(neat or {})
        neat.update({k: kwargs.pop(k) for k in list(kwargs) if k in NEAT_FIELDS})
        cfg = NeatConfig.from_dict(neat) if neat else PRESETS["tiny"]  # validated here: NeatError if bad
        self.neat = cfg.to_dict()
        kwargs.pop("vocab_size", None)
        kwargs.setdefault("bos_token_id", BOS)
        kwargs.setdefault("eos_token_id", EOS)
        kwargs.setdefault("pad_token_id", EOS)  # padding never enters a stream (the attention mask drops it)
        kwargs.setdefault("tie_word_embeddings", False)  # the byte head and the byte embedding are separate
        super().__init__(**kwargs)
        self.vocab_size = cfg.vocab_size

    @property
    def neat_config(self) -> NeatConfig:
        return NeatConfig.from_dict(self.neat)

    @classmethod
    def from_neat(cls, cfg: NeatConfig, **kwargs) -> NeatHFConfig:
        return cls(neat=cfg.to_dict(), **kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """The project's config.json (NeatConfig's fields) plus model_type, so AutoConfig recognises the
        directory and neat_edge.load reads it unchanged."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        data = {**self.neat_config.to_dict(), "model_type": self.model_type}
        atomic_write_bytes(out / "config.json", (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def neat_generation_config(config: NeatHFConfig) -> GenerationConfig:
    """generate()'s defaults as a Session samples: bytes only (the specials suppressed), and with do_sample
    the plain temperature distribution (no top-k), so greedy and sampled decoding mean what they mean there."""
    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                            pad_token_id=config.pad_token_id, suppress_tokens=SPECIALS, top_k=None)
