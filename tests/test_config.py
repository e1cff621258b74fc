import json

import pytest

from neat_edge.config import PRESETS, NeatConfig, preset
from neat_edge.errors import NeatError
from neat_edge.model.checkpoint import build
from neat_edge.model.neat import count_parameters


def test_json_round_trip():
    cfg = preset("small")
    assert NeatConfig.from_json(cfg.to_json()) == cfg
    assert cfg.fingerprint() == NeatConfig.from_json(cfg.to_json()).fingerprint()


@pytest.mark.parametrize("field, value", [("d_model", 0), ("memory_depth", 5), ("patch_size", "4"),
                                          ("latent_heads", 7)])
def test_validation_names_the_bad_field(field, value):
    data = preset("tiny").to_dict() | {field: value}
    with pytest.raises(NeatError, match=field):
        NeatConfig.from_dict(data)


def test_unknown_field_and_bad_json():
    with pytest.raises(NeatError, match="unknown config field 'bogus'"):
        NeatConfig.from_dict({"bogus": 1})
    with pytest.raises(NeatError, match="not valid JSON"):
        NeatConfig.from_json("{")


def test_preset_sizes():
    sizes = {name: count_parameters(build(cfg)) for name, cfg in PRESETS.items()}
    assert sizes["tiny"] < 2_000_000
    assert 15e6 < sizes["small"] < 25e6
    assert 100e6 < sizes["base"] < 140e6
    json.dumps(sizes)


def test_unknown_preset():
    with pytest.raises(NeatError, match="unknown preset"):
        preset("huge")
