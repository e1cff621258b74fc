"""A Python client of the Triton repository (export/triton.py): tritonclient's gRPC streaming API, one
sequence (`sequence_id`) per stream of bytes, the Titans memory and every other state kept by the server
as implicit state. It scores and generates like Session: full segments are committed (COMMIT 1), the
trailing partial segment is scored without being committed (COMMIT 0) and sent again once it fills.

    client = NeatTritonClient("localhost:8001", "triton_repo/neat_triton.json", sequence_id=42)
    logp = client.score(b"...")            # ln p(byte | all before it in this sequence)
    text = client.generate(b"def ", 64)    # greedy
    client.close()                         # the last request carries sequence_end: the server frees the state
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from neat_edge.errors import NeatError
from neat_edge.patching import segment_patches


class NeatTritonClient:
    def __init__(self, url: str, manifest: str | Path | dict, sequence_id: int, model: str = "neat_step",
                 transport=None):
        """`manifest`: the repository's neat_triton.json (segment and patch sizes); `transport`: an object with
        tritonclient.grpc.InferenceServerClient's streaming methods (default: a real client for `url`)."""
        try:
            import tritonclient.grpc as grpcclient
        except ImportError:
            raise NeatError('the Triton client needs tritonclient: pip install -e ".[triton]"') from None
        if not isinstance(manifest, dict):
            from neat_edge.bounded import read_json_file

            manifest = read_json_file(manifest, "Triton repository manifest", 16 << 20)
        info = manifest
        self.segment_len, self.patch_size = info["segment_len"], info["patch_size"]
        self.grpc, self.model, self.sequence_id = grpcclient, model, int(sequence_id)
        if self.sequence_id <= 0:
            raise NeatError("sequence_id must be a positive integer (Triton's correlation id)")
        self.transport = transport if transport is not None else grpcclient.InferenceServerClient(url)
        self._results: queue.Queue = queue.Queue()
        self.transport.start_stream(callback=lambda result, error: self._results.put((result, error)))
        self.pending, self.started, self.closed = b"", False, False

    def _request(self, segment: bytes, commit: bool, end: bool = False) -> np.ndarray:
        """One step on `segment` -> byte_logprobs [len(segment), vocab] (natural log)."""
        if self.closed:
            raise NeatError("this sequence is closed")
        ids, mask = segment_patches(len(segment), self.patch_size)
        feeds = {"bytes": np.frombuffer(segment, np.uint8).astype(np.int64)[None], "patch_ids": ids[None].astype(np.int64),
                 "patch_mask": mask[None].astype(np.float32), "COMMIT": np.full((1, 1), int(commit), np.int32)}
        inputs = []
        for name, value in feeds.items():
            inp = self.grpc.InferInput(name, list(value.shape), {np.int64: "INT64", np.float32: "FP32",
                                                                 np.int32: "INT32"}[value.dtype.type])
            inp.set_data_from_numpy(value)
            inputs.append(inp)
        outputs = [self.grpc.InferRequestedOutput("byte_logprobs")]
        self.transport.async_stream_infer(self.model, inputs, outputs=outputs, sequence_id=self.sequence_id,
                                          sequence_start=not self.started, sequence_end=end)
        self.started = True
        result, error = self._results.get(timeout=600)
        if error is not None:
            raise NeatError(f"Triton request failed: {error}")
        return result.as_numpy("byte_logprobs")[0]

    def score(self, data: bytes) -> np.ndarray:
        """Natural-log probability of each byte of `data` given everything before it in the sequence."""
        buf, new_from, seg = self.pending + bytes(data), len(self.pending), self.segment_len
        out, pos = [], 0
        while pos < len(buf):
            end = min(pos + seg, len(buf))
            rows = self._request(buf[pos:end], commit=end - pos == seg)
            idx = np.arange(max(pos, new_from), end)
            out.append(rows[idx - pos, np.frombuffer(buf, np.uint8)[idx]])
            if end - pos < seg:
                break
            pos = end
        self.pending = buf[pos:] if len(buf) - pos < seg else b""
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def next_byte_logprobs(self) -> np.ndarray:
        """Log-probs of the next byte (the probe byte at that position is never seen: the graph is causal)."""
        return self._request(self.pending + b"\0", commit=False)[len(self.pending)]

    def generate(self, prompt: bytes, max_bytes: int) -> bytes:
        """Greedy continuation of `prompt` (the sequence goes on from where it is)."""
        if prompt:
            self.score(prompt)
        out = bytearray()
        for _ in range(max_bytes):
            byte = int(np.argmax(self.next_byte_logprobs()[:256]))
            out.append(byte)
            self.score(bytes([byte]))
        return bytes(out)

    def close(self) -> None:
        """End the sequence (Triton frees its state): one last uncommitted request with sequence_end."""
        if self.started and not self.closed:
            self._request(self.pending or b"\0", commit=False, end=True)
        self.closed = True
        self.transport.stop_stream()
