"""Hugging Face and Optimum for NEAT-Edge (`pip install -e ".[hf]"`).

Importing this module registers model_type "neat" with AutoConfig, AutoModelForCausalLM and AutoTokenizer, so
`AutoModelForCausalLM.from_pretrained("neat_edge/checkpoints/tiny")` works. It sits at the tools level: it
may import every room, and nothing in the core package imports it (or transformers / optimum).

  NeatHFConfig         the NeatConfig as a PretrainedConfig (model_type "neat"), read/written as config.json
  NeatForCausalLM      PreTrainedModel + GenerationMixin over the PyTorch model (runtimes' PyTorch session)
  NeatStreamCache      the transformers Cache generate() carries: one Session (memory, context, caches) per row
  NeatByteTokenizer    bytes <-> ids 0..255, specials 256..259
  NeatOnnxConfig       Optimum's OnnxConfig for the step graph (neat_edge.hf.onnx_config, needs optimum-onnx)
  ORTNeatForCausalLM   Optimum ORTModel + GenerationMixin over a bundle's decode graphs (neat_edge.hf.ort)
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError:  # one line, the fix: the CLIs print NeatError as `error: ...`
    from neat_edge.errors import NeatError

    raise NeatError('neat_edge.hf needs the Hugging Face extra: pip install -e ".[hf]"') from None

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from neat_edge.hf.configuration import NeatHFConfig, neat_generation_config
from neat_edge.hf.modeling import NeatForCausalLM
from neat_edge.hf.stream import NeatStreamCache
from neat_edge.hf.tokenizer import NeatByteTokenizer

AutoConfig.register(NeatHFConfig.model_type, NeatHFConfig, exist_ok=True)
AutoModelForCausalLM.register(NeatHFConfig, NeatForCausalLM, exist_ok=True)
AutoTokenizer.register(NeatHFConfig, slow_tokenizer_class=NeatByteTokenizer, exist_ok=True)


def __getattr__(name: str):
    # the Optimum side loads only when asked for: transformers alone serves the PyTorch model
    if name == "NeatOnnxConfig":
        from neat_edge.hf.onnx_config import NeatOnnxConfig

        return NeatOnnxConfig
    if name == "ORTNeatForCausalLM":
        from neat_edge.hf.ort import ORTNeatForCausalLM

        return ORTNeatForCausalLM
    raise AttributeError(f"module 'neat_edge.hf' has no attribute '{name}'")


__all__ = ["NeatHFConfig", "NeatForCausalLM", "NeatStreamCache", "NeatByteTokenizer", "NeatOnnxConfig",
           "ORTNeatForCausalLM", "neat_generation_config"]
