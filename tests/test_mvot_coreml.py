"""MVoT image decoder as Core ML: conversion checked on its spec here; pixels compared with PyTorch only
where Core ML predicts (macOS, marked `coreml`)."""

import sys

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install -e '.[coreml]')")

from neat_edge.export.base import image_decoder_source  # noqa: E402
from neat_edge.export.coreml import CoreMLTarget  # noqa: E402
from neat_edge.export.pipeline import PIXEL_TOLERANCE_LOW_PRECISION  # noqa: E402
from neat_edge.model.vq import build_tokenizer, image_size  # noqa: E402
from tests.test_mvot import MICRO  # noqa: E402

ON_MAC = sys.platform == "darwin"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tok = build_tokenizer(MICRO).eval()
    with torch.no_grad():  # a codebook that is not all alike (as after training)
        tok.quantizer._codebook.embed.normal_(generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("mvot_coreml")
    entry = CoreMLTarget().build_graph(image_decoder_source(tok), out)  # the target's default: fp16, as shipped
    return tok, out / entry["file"], entry


def test_image_decoder_converts_with_its_spec(converted):
    _, path, entry = converted
    assert path.name == "image_decoder.mlpackage" and entry["target"] == "coreml" and entry["precision"] == "fp16"
    desc = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description
    g, size = MICRO.image_grid, image_size(MICRO)
    (inp,), (out,) = desc.input, desc.output
    assert inp.name == "image_codes" and list(inp.type.multiArrayType.shape) == [1, g, g]
    assert inp.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32  # no int64 in Core ML
    assert out.name == "pixels"
    assert list(out.type.multiArrayType.shape) in ([], [1, size, size, 3])  # outputs may leave the shape to run time
    assert inp.shortDescription and out.shortDescription  # what Xcode shows


@pytest.mark.coreml
@pytest.mark.skipif(not ON_MAC, reason="Core ML predicts only on macOS (coremltools cannot load models elsewhere)")
def test_image_decoder_pixels_match_pytorch_on_device(converted):
    from neat_edge.runtimes.coreml import CoreMLBackend
    from neat_edge.runtimes.images import TorchImageDecoder
    from neat_edge.spec import image_decoder_spec

    tok, path, entry = converted
    backend = CoreMLBackend(path, image_decoder_spec(MICRO), entry)
    reference = TorchImageDecoder(tok)
    codes = np.random.default_rng(0).integers(0, MICRO.image_codebook_size, (1, MICRO.image_grid, MICRO.image_grid))
    a = backend.step({"image_codes": codes})["pixels"]
    b = reference.step({"image_codes": codes})["pixels"]
    assert np.abs(a - b).max() <= PIXEL_TOLERANCE_LOW_PRECISION  # fp16 program; pixels in [0, 1]
