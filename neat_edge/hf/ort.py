"""ORTNeatForCausalLM: Optimum's ORTModel + GenerationMixin over one of our bundles, generating through the
bundle's decode graphs with ONNX Runtime.

The bundle is opened by the runtimes (open_session: the step graph for prefill, the decode graphs for every
byte, runtimes/decoding.py decides which graph runs), so this class adds no math: it is NeatStreamMixin's
forward over Sessions that share the bundle's ONNX Runtime sessions. The decode graphs always run through IO
binding (OnnxRuntimeBackend.step_native): on the CUDA provider the caches stay on the GPU between steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from optimum.onnxruntime import ORTModel
from transformers import AutoModelForCausalLM, GenerationMixin

from neat_edge.errors import NeatError
from neat_edge.hf.configuration import NeatHFConfig, neat_generation_config
from neat_edge.hf.stream import NeatStreamMixin
from neat_edge.runtimes.session import Session

PROVIDERS = {"CPUExecutionProvider": "onnxruntime", "CUDAExecutionProvider": "onnxruntime:cuda"}


class ORTNeatForCausalLM(NeatStreamMixin, ORTModel, GenerationMixin):
    auto_model_class = AutoModelForCausalLM
    main_input_name = "input_ids"
    _is_stateful = True  # generate() makes no DynamicCache: prepare_inputs_for_generation makes a NeatStreamCache
    _supports_cache_class = True

    def __init__(self, *, config: NeatHFConfig, session: Session, bundle_dir: str | Path,
                 initial_state: dict, use_io_binding: bool | None = None, generation_config=None):
        # ORTModel keeps one InferenceSession for its own bookkeeping (provider, device): the step graph's
        # use_io_binding: the decode graphs always run through IO binding (step_native), on every provider
        super().__init__(config=config, session=session.backend.session,
                         use_io_binding=True if use_io_binding is None else use_io_binding, model_save_dir=Path(bundle_dir))
        self.neat_session, self.bundle_dir, self._initial = session, Path(bundle_dir), initial_state
        self.svf_z = None  # Transformer² z for new streams (None: the base model, z = 1)
        self.generation_config = generation_config or neat_generation_config(config)

    @classmethod
    def from_pretrained(cls, model_id, provider: str = "CPUExecutionProvider", threads: int | None = None,
                        use_io_binding: bool | None = None, **kwargs) -> ORTNeatForCausalLM:
        """model_id: a bundle directory (neat-export --target onnx). provider: CPUExecutionProvider or
        CUDAExecutionProvider; threads: ONNX Runtime's intra-op threads for every graph."""
        if provider not in PROVIDERS:
            raise NeatError(f"unknown provider '{provider}' (choose from {', '.join(PROVIDERS)})")
        from neat_edge.bundle import open_bundle
        from neat_edge.runtimes import open_session

        bundle_dir = Path(str(model_id))
        session = open_session(bundle_dir, backend=PROVIDERS[provider], threads=threads)
        if session.decode_graphs is None:
            raise NeatError(f"bundle {bundle_dir} has no decode graphs for ONNX Runtime (re-export it with neat-export)")
        bundle = open_bundle(bundle_dir, verify_checksums=False)  # open_session verified them just now
        return cls(config=NeatHFConfig.from_neat(bundle.config), session=session, bundle_dir=bundle_dir,
                   initial_state=bundle.initial_state(), use_io_binding=use_io_binding)

    def new_session(self) -> Session:
        """A fresh stream over the bundle's ONNX Runtime sessions (shared: IO binding rebinds whatever input
        a stream changed, so streams may interleave)."""
        tpl = self.neat_session
        session = Session(tpl.backend, tpl.config, self._initial, svf_z=self.svf_z, patches=tpl.patches,
                          decode=tpl.decode_graphs)
        session.experts, session.image_decoder = tpl.experts, tpl.image_decoder
        return session

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, labels=None, use_cache=None,
                logits_to_keep: int = 0, **kwargs):
        return self.stream_forward(input_ids, past_key_values, attention_mask, labels, use_cache, logits_to_keep)

    def _save_pretrained(self, save_directory) -> None:
        # a bundle is a directory of graphs + neat.json (checksums): saved as the whole directory
        if Path(save_directory).resolve() != self.bundle_dir.resolve():
            shutil.copytree(self.bundle_dir, save_directory, dirs_exist_ok=True)
