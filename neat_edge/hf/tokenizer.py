"""NeatByteTokenizer: bytes are ids 0..255, the specials 256..259 (BOS, EOS, BOI, EOI). No vocabulary file.

Each byte is one token whose string is the character with that code point (latin-1), so tokens are
one-character strings that round-trip every byte, UTF-8 or not; decode() joins the bytes and reads them as
UTF-8 (invalid sequences replaced). Text that spells a special ("<eos>") stays bytes: split_special_tokens.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizer

from neat_edge.config import BOI, BOS, EOI, EOS

SPECIAL_TOKENS = {"<bos>": BOS, "<eos>": EOS, "<boi>": BOI, "<eoi>": EOI}


class NeatByteTokenizer(PreTrainedTokenizer):
    model_input_names = ["input_ids", "attention_mask"]
    vocab_files_names: dict = {}

    def __init__(self, **kwargs):
        kwargs.setdefault("bos_token", "<bos>")
        kwargs.setdefault("eos_token", "<eos>")
        kwargs.setdefault("pad_token", "<eos>")  # as the model's config: padding is masked out of the stream
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        kwargs.setdefault("padding_side", "left")  # a stream continues from its last byte
        kwargs.setdefault("model_max_length", 1 << 62)  # the stream has no length limit
        self._special_ids = dict(SPECIAL_TOKENS)
        self._special_tokens = {v: k for k, v in SPECIAL_TOKENS.items()}
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIAL_TOKENS)

    def get_vocab(self) -> dict[str, int]:
        return {**{chr(i): i for i in range(256)}, **self._special_ids}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [chr(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if token in self._special_ids:
            return self._special_ids[token]
        if len(token) == 1 and ord(token) < 256:
            return ord(token)
        return self.unk_token_id if self.unk_token is not None else EOS

    def _convert_id_to_token(self, index: int) -> str:
        return chr(index) if index < 256 else self._special_tokens.get(index, "")

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        out, chunk = [], bytearray()
        for token in tokens:
            if len(token) == 1 and ord(token) < 256:
                chunk.append(ord(token))
            else:  # a special (skip_special_tokens=False): written as its name
                out += [chunk.decode("utf-8", errors="replace"), token]
                chunk = bytearray()
        return "".join(out) + chunk.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple:
        return ()  # the vocabulary is the 256 byte values and the specials: nothing to store
