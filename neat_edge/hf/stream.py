"""NeatStreamCache: the stream state that generate() carries between steps, and the forward pass over it,
shared by NeatForCausalLM (PyTorch) and ORTNeatForCausalLM (a bundle's decode graphs on ONNX Runtime).

A NEAT stream's state is not keys and values: it is the Titans memory, the carried context, the pending
partial segment and the decode caches, all of which a runtimes Session already keeps (runtimes/session.py).
So the cache holds one Session per batch row and a forward pass appends that row's new tokens to its
Session exactly as Session.generate appends a prompt and each chosen byte; the logits are the Session's
next-byte log-probs. One copy of the math: greedy generate() gives Session.generate's bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from neat_edge.config import IMAGE_BASE
from neat_edge.errors import NeatError
from neat_edge.runtimes.session import Session


class NeatStreamCache(Cache):
    """One NEAT stream (a Session) per batch row, created on the first forward pass; `seen` counts the input
    columns consumed (padding included), which is what generate() slices new tokens by."""

    def __init__(self, new_session: Callable[[], Session]):
        super().__init__(layers=[])
        self._new_session = new_session
        self.sessions: list[Session] = []
        self.seen = 0

    def streams(self, batch: int) -> list[Session]:
        if not self.sessions:
            self.sessions = [self._new_session() for _ in range(batch)]
        elif len(self.sessions) != batch:
            raise NeatError(f"this NeatStreamCache holds {len(self.sessions)} streams, the input has {batch} rows")
        return self.sessions

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.seen

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1  # a stream has no length limit

    def get_mask_sizes(self, cache_position: torch.Tensor, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen + cache_position.shape[0], 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return bool(self.sessions)

    @property
    def max_batch_size(self) -> int:
        return len(self.sessions)

    @property
    def max_cache_len(self) -> int:
        return -1

    def __bool__(self) -> bool:  # Cache's __len__ counts key/value layers (none here): never "empty"
        return True

    def __repr__(self) -> str:
        return f"NeatStreamCache(streams={len(self.sessions)}, seen={self.seen})"

    def reset(self) -> None:
        self.sessions, self.seen = [], 0

    def _unsupported(self, *args, **kwargs):
        # a stream cannot be rolled back or copied row-wise cheaply: beam search, assisted decoding, contrastive
        raise NeatError("NEAT streams support greedy and sampled generate() only (no beam search, assisted or "
                        "contrastive decoding: a stream's memory cannot be rolled back or reordered)")

    reorder_cache = crop = batch_repeat_interleave = batch_select_indices = _unsupported


def _as_stream_piece(tokens: np.ndarray):
    """bytes when every token is a byte (what Session.generate passes), else the int64 tokens."""
    return tokens.astype(np.uint8).tobytes() if (tokens < 256).all() else tokens


class NeatStreamMixin:
    """forward() and prepare_inputs_for_generation() over NeatStreamCache. A subclass gives new_session()
    (a fresh stream on its runtime) and `device`; its config is a NeatHFConfig."""

    def new_session(self) -> Session:
        raise NotImplementedError

    def new_cache(self) -> NeatStreamCache:
        return NeatStreamCache(self.new_session)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        # only the columns the streams have not consumed yet (the whole prompt first, then one token a step);
        # logits_to_keep=1: generate() reads the last position, which the decode graphs give without scoring
        cache = self._cache(past_key_values)
        return {"input_ids": input_ids[:, cache.seen:], "past_key_values": cache,
                "attention_mask": attention_mask, "logits_to_keep": 1}

    def _cache(self, past_key_values) -> NeatStreamCache:
        if past_key_values is None:
            return self.new_cache()
        if not isinstance(past_key_values, NeatStreamCache):
            raise NeatError(f"past_key_values must be a NeatStreamCache (got {type(past_key_values).__name__}): "
                            "a NEAT stream's state is its Session, not keys and values")
        return past_key_values

    def stream_forward(self, input_ids, past_key_values=None, attention_mask=None, labels=None, use_cache=None,
                       logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        """input_ids [batch, T]: the new tokens of each row's stream (the whole sequence when there is no
        cache). logits [batch, T or logits_to_keep, vocab]: position t holds log p(next token | the stream
        up to and including token t), natural log over the byte head's vocabulary (bytes + specials).
        attention_mask (covering past + new columns, or just the new ones): zeros are padding, never fed."""
        if input_ids is None:
            raise NeatError("NEAT reads token ids (bytes): pass input_ids, not inputs_embeds")
        ids = torch.as_tensor(input_ids).detach().cpu().numpy()
        vocab = self.config.vocab_size
        top = IMAGE_BASE + self.config.neat["image_codebook_size"]  # MVoT image tokens sit above the specials
        if ids.ndim != 2 or (ids.size and (ids.min() < 0 or ids.max() >= top)):
            raise NeatError(f"input_ids must be [batch, length] token ids (bytes 0..255, specials 256..259, "
                            f"image tokens above), got shape {tuple(ids.shape)}")
        ids = ids.astype(np.int64)
        batch, length = ids.shape
        mask = None
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask).detach().cpu().numpy()[:, -length:].astype(bool)
        cache = self._cache(past_key_values)
        keep = int(logits_to_keep or 0)
        rows = []
        for b, session in enumerate(cache.streams(batch)):
            real = np.ones(length, bool) if mask is None else mask[b]
            if keep == 1 and labels is None:  # generation: the stream advances, the next byte's log-probs only
                session.append(_as_stream_piece(ids[b][real]))
                rows.append(session.next_byte_logprobs()[None])
            else:
                rows.append(_all_positions(session, ids[b], real, vocab)[-keep:] if keep else
                            _all_positions(session, ids[b], real, vocab))
        cache.seen += length
        logits = torch.from_numpy(np.stack(rows).astype(np.float32)).to(self.device)
        loss = None
        if labels is not None:  # next-token cross-entropy: log_softmax of log-probs is themselves
            labels = torch.as_tensor(labels).to(logits.device)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache if use_cache is not False else None)


def _all_positions(session: Session, ids: np.ndarray, real: np.ndarray, vocab: int) -> np.ndarray:
    """Log-prob rows for every input position (scored through the segment step), zeros at padding."""
    tokens = ids[real]
    if (tokens >= 256).any():
        raise NeatError("scoring every position takes bytes only (ids 0..255); generation (logits_to_keep=1) "
                        "also takes specials and image tokens")
    out = np.zeros((len(ids), vocab), np.float32)
    if len(tokens):
        # row i of score_with_distributions is log p(token i | before): position t predicts token t + 1
        rows = session.score_with_distributions(tokens.astype(np.uint8).tobytes())[1]
        out[np.flatnonzero(real)] = np.concatenate([rows[1:], session.next_byte_logprobs()[None]])
    return out
