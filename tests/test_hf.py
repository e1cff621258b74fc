"""neat_edge.hf: transformers' generate() through NeatForCausalLM (PyTorch) and ORTNeatForCausalLM (a bundle's
decode graphs on ONNX Runtime) gives Session.generate's bytes; Auto* classes, save/load, tokenizer, pipeline;
Optimum's export() and validate_model_outputs() on the shipped model."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason='the Hugging Face extra is not installed: pip install -e ".[hf]"')

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

from neat_edge.errors import NeatError  # noqa: E402
from neat_edge.hf import NeatByteTokenizer, NeatForCausalLM, NeatHFConfig, NeatStreamCache  # noqa: E402
from neat_edge.model.checkpoint import DEFAULT_CHECKPOINT  # noqa: E402
from neat_edge.runtimes import open_model_session, open_session  # noqa: E402

OPTIMUM = 'optimum-onnx is not installed: pip install -e ".[hf]"'


@pytest.fixture(scope="module")
def hf_model():
    return AutoModelForCausalLM.from_pretrained(str(DEFAULT_CHECKPOINT))


@pytest.fixture(scope="module")
def ort_model(bundle_dir):
    pytest.importorskip("optimum.onnxruntime", reason=OPTIMUM)
    from neat_edge.hf import ORTNeatForCausalLM

    return ORTNeatForCausalLM.from_pretrained(bundle_dir)


def left_padded(prompts: list[bytes]):
    batch = NeatByteTokenizer()([p.decode() for p in prompts], return_tensors="pt", padding=True)
    return batch.input_ids, batch.attention_mask


def generated(out: torch.Tensor, input_ids: torch.Tensor) -> list[bytes]:
    return [bytes(row[input_ids.shape[1]:].tolist()) for row in out]


def test_auto_classes_read_the_shipped_checkpoint(hf_model, model):
    assert isinstance(AutoConfig.from_pretrained(str(DEFAULT_CHECKPOINT)), NeatHFConfig)
    assert isinstance(hf_model, NeatForCausalLM) and hf_model.config.neat == model.cfg.to_dict()
    assert isinstance(AutoTokenizer.from_pretrained(str(DEFAULT_CHECKPOINT)), NeatByteTokenizer)
    ours, theirs = hf_model.neat.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_torch_greedy_generate_equals_session(hf_model, corpus):
    """A batch of two prompts of different lengths (left padding, masked out of the streams), 160 bytes each:
    past two segment boundaries (128 bytes), so prefill, the decode graphs and commits all run."""
    prompts = [corpus[:40], corpus[1000:1011]]
    input_ids, mask = left_padded(prompts)
    out = hf_model.generate(input_ids, attention_mask=mask, max_new_tokens=160)
    for prompt, got in zip(prompts, generated(out, input_ids)):
        assert got == open_model_session(hf_model.neat).generate(prompt, 160)


def test_ort_greedy_generate_equals_session(ort_model, bundle_dir, corpus):
    prompts = [corpus[:40], corpus[1000:1011]]
    input_ids, mask = left_padded(prompts)
    out = ort_model.generate(input_ids, attention_mask=mask, max_new_tokens=160)
    for prompt, got in zip(prompts, generated(out, input_ids)):
        assert got == open_session(bundle_dir).generate(prompt, 160)


def test_sampled_generate_draws_from_the_session_distribution(hf_model):
    """Sampling: the RNGs differ (torch vs numpy), so the check is the distribution along the sampled path:
    generate()'s processed scores are the Session's log p / T over bytes, the specials never drawn."""
    prompt, t = b"def parse(", 0.7
    torch.manual_seed(3)
    out = hf_model.generate(torch.tensor([list(prompt)]), do_sample=True, temperature=t, max_new_tokens=40,
                            output_scores=True, return_dict_in_generate=True)
    session = open_model_session(hf_model.neat)
    session.append(prompt)
    for byte, scores in zip(out.sequences[0, len(prompt):].tolist(), out.scores):
        expect = session.next_byte_logprobs()[:256].astype(np.float64) / t
        got = torch.log_softmax(scores[0].double(), -1).numpy()
        assert np.isneginf(got[256:]).all()
        np.testing.assert_allclose(got[:256], expect - np.logaddexp.reduce(expect), atol=1e-5)
        session.append(bytes([byte]))


def test_forward_logits_and_loss_are_the_session_scores(hf_model, corpus):
    text = corpus[:300]
    ids = torch.tensor([list(text)])
    out = hf_model(ids, labels=ids)
    logp, rows = open_model_session(hf_model.neat).score_with_distributions(text)
    np.testing.assert_allclose(out.logits[0, :-1].numpy(), rows[1:], atol=1e-6)
    assert out.loss.item() == pytest.approx(-logp[1:].mean(), abs=1e-5)
    assert isinstance(out.past_key_values, NeatStreamCache) and out.past_key_values.get_seq_length() == 300
    # the stream continues from the cache: one more byte, the log-probs of the one after it
    more = hf_model(torch.tensor([[32]]), past_key_values=out.past_key_values, logits_to_keep=1)
    session = open_model_session(hf_model.neat)
    session.append(text + b" ")
    np.testing.assert_allclose(more.logits[0, -1].numpy(), session.next_byte_logprobs(), atol=1e-5)


def test_save_pretrained_writes_a_project_checkpoint(hf_model, tmp_path):
    out = tmp_path / "ckpt"  # no "neat" in the path: AutoConfig finds the model type in config.json
    hf_model.save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "neat"
    assert (out / "experts" / "python.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(str(out))
    import neat_edge

    plain = neat_edge.load(out)  # still a checkpoint directory for the rest of the project
    assert plain.cfg.fingerprint() == hf_model.neat.cfg.fingerprint()
    ours, theirs = again.neat.state_dict(), hf_model.neat.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_pipeline_and_tokenizer(hf_model):
    tok = NeatByteTokenizer()
    text = "héllo <eos> \x00"
    ids = tok(text).input_ids
    assert ids == list(text.encode()) and tok.decode(ids) == text  # a special's spelling stays bytes
    assert tok.convert_ids_to_tokens(257) == "<eos>" and tok.decode([104, 257], skip_special_tokens=True) == "h"
    pipe = pipeline("text-generation", model=hf_model, tokenizer=tok)
    got = pipe("def parse(", max_new_tokens=24, do_sample=False)[0]["generated_text"]  # pipelines sample by default
    expect = open_model_session(hf_model.neat).generate(b"def parse(", 24)
    assert got == "def parse(" + expect.decode("utf-8", errors="replace")


def test_bad_input_is_one_neat_error(hf_model, tmp_path):
    with pytest.raises(NeatError, match="input_ids must be"):
        hf_model(torch.tensor([[5000]]))
    with pytest.raises(NeatError, match="no beam search"):
        hf_model.generate(torch.tensor([[100, 101]]), num_beams=2, max_new_tokens=2)
    with pytest.raises(NeatError, match="not a NEAT checkpoint directory"):
        NeatForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(NeatError, match="past_key_values must be a NeatStreamCache"):
        hf_model(torch.tensor([[100]]), past_key_values=object())


def test_optimum_export_and_validate_model_outputs(hf_model, bundle_dir, tmp_path):
    """Optimum's export() of the shipped model and validate_model_outputs at atol 1e-5 on it and on the
    project's own step.onnx (full 128-byte segments); a model that differs by 1e-3 fails validation."""
    onnx_exporters = pytest.importorskip("optimum.exporters.onnx", reason=OPTIMUM)
    from optimum.exporters.error_utils import AtolError

    from neat_edge.hf import NeatOnnxConfig

    config = NeatOnnxConfig(hf_model.config, model=hf_model)
    path = tmp_path / "step.onnx"
    _, outputs = onnx_exporters.export(hf_model, config, path)
    assert outputs == config.spec.output_names
    validate = onnx_exporters.validate_model_outputs
    validate(config, hf_model, path, outputs, atol=1e-5, use_subprocess=False)
    validate(config, hf_model, bundle_dir / "step.onnx", outputs, atol=1e-5, use_subprocess=False,
             input_shapes={"sequence_length": hf_model.neat.cfg.segment_len})
    other = NeatForCausalLM.from_pretrained(str(DEFAULT_CHECKPOINT))
    with torch.no_grad():
        other.neat.byte_head.bias[0] += 1e-2
    with pytest.raises(AtolError):
        validate(config, other, path, outputs, atol=1e-5, use_subprocess=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_512_bytes_from_several_prompts_equal_session(kind, hf_model, bundle_dir, corpus, request):
    """The issue's criterion at full size: greedy, 512 bytes (four segment commits), several prompts."""
    lm = hf_model if kind == "torch" else request.getfixturevalue("ort_model")
    for prompt in (b"def parse(", corpus[:200], b"The ", corpus[5000:5077]):
        out = lm.generate(torch.tensor([list(prompt)]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=512)
        session = open_model_session(hf_model.neat) if kind == "torch" else open_session(bundle_dir)
        assert bytes(out[0, len(prompt):].tolist()) == session.generate(prompt, 512)
