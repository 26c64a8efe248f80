"""CompressAI interop: the model registry, from_state_dict, checkpoint layouts, eval flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressai.registry import MODELS

import hpcm
import hpcm.codec.zoo  # registers the models in compressai.registry.MODELS
from hpcm.codec.checkpoint import model_checkpoint
from hpcm.eval.evaluate import build_parser


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in a.state_dict() if not k.startswith("y_"))


def test_models_registered_with_compressai() -> None:
    assert {"hpcm_base", "hpcm_large", "hpcm_tiny"} <= set(MODELS)
    # CompressAI-Trainer builds MODELS[name](**hp); hp overrides config fields.
    model = MODELS["hpcm_tiny"](M=48)
    assert isinstance(model, hpcm.HPCM) and model.name == "tiny" and model.config.M == 48
    assert MODELS["hpcm_large"].name == "hpcm_large"


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model_state_dict", "project"])
def test_checkpoint_layouts_load_and_find_the_model(tmp_path: Path, layout: str) -> None:
    torch.manual_seed(0)
    model = hpcm.build_model("tiny")
    state = model.state_dict()
    ckpt = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model_state_dict": {"model_state_dict": state, "epoch": 3},  # CompressAI-Trainer
        "project": model_checkpoint(model),
    }[layout]
    torch.save(ckpt, tmp_path / "ckpt.pth.tar")
    loaded = hpcm.load_model(tmp_path / "ckpt.pth.tar", update=False)
    assert loaded.name == "tiny" and _same_weights(loaded, model)
    from_sd = MODELS["hpcm_tiny"].from_state_dict(ckpt)
    assert _same_weights(from_sd, model) and not from_sd.training
    assert _same_weights(hpcm.HPCM.from_state_dict(state), model)


def test_state_dict_of_no_model_gives_a_one_line_error() -> None:
    state = hpcm.build_model("tiny", M=48).state_dict()
    with pytest.raises(hpcm.CheckpointError, match="does not fit model 'hpcm_base'"):
        hpcm.load_model(state, update=False)
    with pytest.raises(hpcm.CheckpointError, match="neither a project checkpoint"):
        hpcm.load_model({"model_state_dict": {"weights": torch.zeros(2)}})


def test_evaluate_accepts_compressai_flags() -> None:
    args = build_parser().parse_args(["ckpt", "--dataset", "d", "--cuda", "-o", "res"])
    assert args.device == "cuda" and args.out == Path("res")
    args = build_parser().parse_args(["ckpt", "--dataset", "d", "-d", "res2", "--per-image"])
    assert args.out == Path("res2") and args.per_image and args.device is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ckpt", "--dataset", "d", "-o", "kodak.json"])
