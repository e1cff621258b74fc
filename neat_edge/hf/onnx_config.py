"""NeatOnnxConfig: Optimum's OnnxConfig for the NEAT step graph, so optimum.exporters.onnx's export() and
validate_model_outputs() take a NeatForCausalLM.

What Optimum exports is the project's step graph (spec.step_spec: one segment, every piece of state an input
and an output), not a forward pass over input_ids: inputs, outputs and their dynamic axes come from the
GraphSpec, the state inputs travel as one nested input `state` (names `state.*`, as past_key_values do), and
the model patcher runs StepModule, the very module the project's exporters trace. Dummy inputs are a real
stream's: random bytes in fixed patches, z = 1, the model's learned initial state.
"""

from __future__ import annotations

import numpy as np
import torch
from optimum.exporters.onnx import OnnxConfig
from optimum.exporters.onnx.model_patcher import ModelPatcher
from optimum.utils import DummyInputGenerator, NormalizedConfig

from neat_edge.errors import NeatError
from neat_edge.model.graphs import StepModule
from neat_edge.patching import segment_patches
from neat_edge.spec import STATE_IN, GraphSpec, step_spec

STEP_INPUTS = ("bytes", "patch_ids", "patch_mask", "svf_z")


class NeatDummyInputGenerator(DummyInputGenerator):
    """The step graph's inputs for `batch_size` streams and a segment of `sequence_length` bytes."""

    SUPPORTED_INPUT_NAMES = (*STEP_INPUTS, "state")

    def __init__(self, task: str, normalized_config, batch_size: int = 2, sequence_length: int = 16,
                 initial_state: dict | None = None, svf_rank: int = 0, state_names=(), seed: int = 0, **kwargs):
        cfg = normalized_config.config.neat_config
        if not 1 <= sequence_length <= cfg.segment_len:
            raise NeatError(f"sequence_length must be 1..{cfg.segment_len} (one segment), got {sequence_length}")
        self.cfg, self.batch, self.length = cfg, batch_size, sequence_length
        self.initial_state, self.svf_rank = initial_state or {}, svf_rank
        self.state_names = list(state_names)  # the graph's order: the exporter names nested inputs in it
        self.rng = np.random.default_rng(seed)

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        b, n = self.batch, self.length
        ids, mask = segment_patches(n, self.cfg.patch_size)
        value = {
            "bytes": lambda: self.rng.integers(0, 256, (b, n), dtype=np.int64),
            "patch_ids": lambda: np.broadcast_to(np.asarray(ids, np.int64), (b, n)).copy(),
            "patch_mask": lambda: np.broadcast_to(np.asarray(mask, np.float32), (b, len(mask))).copy(),
            "svf_z": lambda: np.ones(self.svf_rank, np.float32),
            "state": lambda: {STATE_IN + k: np.repeat(self.initial_state[k], b, axis=0) for k in self.state_names},
        }[input_name]()
        if framework == "np":
            return value
        if isinstance(value, dict):
            return {k: torch.from_numpy(v) for k, v in value.items()}
        return torch.from_numpy(value)


class NeatStepPatcher(ModelPatcher):
    """During export and validation the model's forward is the step graph: (bytes, patch_ids, patch_mask,
    svf_z, state) -> {byte_logprobs, image_logits, dispatch_logits, next_state.*} by name."""

    def __init__(self, config: NeatOnnxConfig, model, model_kwargs: dict | None = None):
        super().__init__(config, model, model_kwargs)
        step = StepModule(model.neat, config.spec).eval()
        state_names = [n for n in config.spec.input_names if n.startswith(STATE_IN)]
        output_names = config.spec.output_names

        def patched_forward(bytes, patch_ids, patch_mask, svf_z, state):  # noqa: A002 (the graph's input name)
            outputs = step(bytes, patch_ids, patch_mask, svf_z, *(state[n] for n in state_names))
            return dict(zip(output_names, outputs))

        self.patched_forward = patched_forward


class NeatOnnxConfig(OnnxConfig):
    """The step graph of `model` (a NeatForCausalLM) for Optimum: NeatOnnxConfig(model.config, model=model)."""

    NORMALIZED_CONFIG_CLASS = NormalizedConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (NeatDummyInputGenerator,)
    ATOL_FOR_VALIDATION = 1e-5
    DEFAULT_ONNX_OPSET = 17
    _MODEL_PATCHER = NeatStepPatcher

    def __init__(self, config, task: str = "text-generation", model=None, **kwargs):
        super().__init__(config, task=task, **kwargs)
        neat = model.neat if model is not None else None
        if neat is None:
            from neat_edge.hf.modeling import _seeded

            neat = _seeded(config)  # the config's seeded model: the spec's shapes and a plausible state
        self.spec: GraphSpec = step_spec(neat)
        self.initial_state = {k: v.detach().cpu().numpy() for k, v in neat.initial_state(1).items()}
        self.state_names = [n[len(STATE_IN):] for n in self.spec.input_names if n.startswith(STATE_IN)]

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in self.spec.inputs}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in self.spec.outputs}

    def generate_dummy_inputs(self, framework: str = "pt", **input_shapes) -> dict:
        shapes = {k: input_shapes[k] for k in ("batch_size", "sequence_length") if k in input_shapes}
        gen = NeatDummyInputGenerator(self.task, self._normalized_config, initial_state=self.initial_state,
                                      svf_rank=self.spec.inputs[3].shape[0], state_names=self.state_names, **shapes)
        return {name: gen.generate(name, framework) for name in NeatDummyInputGenerator.SUPPORTED_INPUT_NAMES}

    def generate_dummy_inputs_for_validation(self, reference_model_inputs: dict, onnx_input_names=None) -> dict:
        """ONNX Runtime's feeds: the nested state flattened to its input names; an exporter may drop an input
        its graph never reads, so only what the graph takes."""
        flat = {k: v for k, v in reference_model_inputs.items() if k != "state"}
        flat.update(reference_model_inputs.get("state", {}))
        return flat if onnx_input_names is None else {k: v for k, v in flat.items() if k in set(onnx_input_names)}
