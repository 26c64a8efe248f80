"""The codec: architecture, official compatibility, real bitstreams, file format, CLI."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from official_weights import (
    astronaut,
    formula_model,
    official_formula_state_dict,
    official_shapes,
    official_vector,
)
from PIL import Image

import hpcm
from hpcm.codec import (
    CodecError,
    Encoded,
    crop_center,
    decode_image,
    encode_image,
    pad_to_multiple,
    read_image,
)
from hpcm.codec.__main__ import main
from hpcm.codec.checkpoint import atomic_torch_save, model_checkpoint
from hpcm.codec.state_dict import convert_official_state_dict, official_model_name


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    model = hpcm.build_model("tiny")
    with torch.no_grad():  # larger weights than the init, so that the latents are not all zero
        for p in model.g_a.parameters():
            p.mul_(2.0)
    model.eval().update()
    return model


def _forward_recon(model, x):
    with torch.no_grad():
        x_hat = model(pad_to_multiple(x))["x_hat"].clamp(0, 1)
    return crop_center(x_hat, x.shape[-2:])


OFFICIAL_COUNTS = {  # ../shared/spec/hpcm-family.md (all nn.Parameters, the gains included)
    "hpcm_base": 68_505_299,
    "hpcm_large": 89_718_803,
    "hpcm_phi_context": 63_582_419,
    "hpcm_1b": 1_000_328_003,
}
OFFICIAL_NAMES = {
    "HPCM_Base": "hpcm_base",
    "HPCM_Large": "hpcm_large",
    "HPCM_Base_PhiContext": "hpcm_phi_context",
    "HPCM_1B": "hpcm_1b",
}


def _meta_model(name):
    with torch.device("meta"):  # shapes only: no memory for HPCM-1B's 4 GB of weights
        return hpcm.build_model(name)


def test_parameter_counts():
    counts = {n: sum(p.numel() for p in _meta_model(n).parameters()) for n in hpcm.MODEL_CONFIGS}
    assert {n: counts[n] for n in OFFICIAL_COUNTS} == OFFICIAL_COUNTS
    assert counts["tiny"] < 1_000_000
    assert counts["tiny_phi"] < counts["tiny"]  # no cross-attention
    with pytest.raises(ValueError, match="unknown model"):
        hpcm.build_model("hpcm_huge")
    with pytest.raises(ValueError, match="unknown context 'lstm'"):
        hpcm.build_model("tiny", context="lstm")


@pytest.mark.parametrize("official", list(OFFICIAL_NAMES))
def test_official_layout_maps_onto_every_parameter(official):
    shapes = official_shapes(official)
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert official_model_name(state) == OFFICIAL_NAMES[official]
    converted = convert_official_state_dict(state)
    own = {k: tuple(v.shape) for k, v in _meta_model(OFFICIAL_NAMES[official]).named_parameters()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == own


def test_hpcm_1b_layout_is_refused_by_another_model_in_one_line():
    shapes = official_shapes("HPCM_1B")
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}  # shapes only
    with pytest.raises(hpcm.CheckpointError, match="does not fit model 'hpcm_phi_context'") as e:
        hpcm.load_model(state, name="hpcm_phi_context", update=False)
    assert "\n" not in str(e.value) and "shape mismatches" in str(e.value)


def test_released_checkpoints_without_adaptive_params_load(tmp_path):
    state = {k: v for k, v in official_formula_state_dict().items() if "adaptive" not in k}
    path = tmp_path / "official.pth"
    torch.save(state, path)
    model = hpcm.load_model(path, name="hpcm_base", update=False)
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.adaptive_params)
    assert not model.training
    with pytest.raises(hpcm.CheckpointError, match="does not fit model 'hpcm_large'"):
        hpcm.load_model(path, name="hpcm_large", update=False)


def test_phi_context_checkpoint_loads_and_is_told_from_base(tmp_path):
    path = tmp_path / "HPCM_Base_PhiContext_0.013.pth.tar"
    torch.save({"state_dict": official_formula_state_dict("HPCM_Base_PhiContext")}, path)
    model = hpcm.load_model(path, update=False)  # the model is recognised from the keys
    assert model.name == "hpcm_phi_context" and not hasattr(model, "attn")
    assert hpcm.load_model(path, name="hpcm_phi_context", update=False).config.context == "phi"
    with pytest.raises(hpcm.CheckpointError, match=r"does not fit model 'hpcm_base'.*missing"):
        hpcm.load_model(path, name="hpcm_base", update=False)
    base = tmp_path / "base.pth"
    torch.save(official_formula_state_dict(), base)
    with pytest.raises(hpcm.CheckpointError, match=r"fit model 'hpcm_phi_context'.*unexpected"):
        hpcm.load_model(base, name="hpcm_phi_context", update=False)


@contextlib.contextmanager
def one_thread():
    """One torch thread inside the block (the official reconstruction is a one-thread one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _official_round_trip(model, x):
    """compress + decompress on the official numeric path, one thread: (output, x_hat)."""
    model.set_official_numerics(True)
    with one_thread():
        out = model.compress(x)
        return out, model.decompress(out["strings"], out["shape"])["x_hat"]


def _check_recon_sha(x_hat, ref):
    """The 8-bit reconstruction (N, C, H, W bytes) hashes as the official decoder's."""
    recon = x_hat.mul(255).round().to(torch.uint8)
    assert hashlib.sha256(recon.numpy().tobytes()).hexdigest() == ref["x_hat_uint8_sha256"]


def _check_streams(out, ref):
    y, z = out["strings"][0][0], out["strings"][1][0]
    assert (len(y), len(z)) == (ref["y_bytes"], ref["z_bytes"])
    assert hashlib.sha256(y).hexdigest() == ref["y_sha256"]
    assert hashlib.sha256(z).hexdigest() == ref["z_sha256"]
    assert list(out["shape"]) == ref["z_shape"]


@pytest.mark.slow
def test_official_vectors_byte_exact():
    """Formula-built official weights reproduce the official codec's streams byte for byte and,
    on the official (oneDNN) path with one thread, its reconstruction pixel for pixel."""
    ref = official_vector("official-hpcm-base-astronaut.json")
    model = hpcm.load_model(official_formula_state_dict(), name="hpcm_base")
    x = astronaut()
    out, x_hat = _official_round_trip(model, x)
    _check_streams(out, ref)
    _check_recon_sha(x_hat, ref)
    y, z = out["strings"][0][0], out["strings"][1][0]
    bpp = (len(y) + len(z)) * 8 / (x.shape[2] * x.shape[3])
    assert bpp == pytest.approx(ref["bpp"], abs=1e-12)


@pytest.mark.slow
def test_phi_context_vector_byte_exact():
    """HPCM_Base_PhiContext: the official streams and the one-thread reconstruction."""
    ref = official_vector("official-hpcm-phi-context-astronaut.json")
    model = hpcm.load_model(official_formula_state_dict("HPCM_Base_PhiContext"))
    out, x_hat = _official_round_trip(model, astronaut())
    _check_streams(out, ref)
    _check_recon_sha(x_hat, ref)


@pytest.mark.slow
def test_hpcm_1b_vector_byte_exact():
    """HPCM_1B (10^9 parameters, 4 GB, built once and freed at the end): the official streams
    for the top 512x256 half of the astronaut (about half a minute on one thread)."""
    ref = official_vector("official-hpcm-1b-astronaut-top.json")
    model = formula_model("HPCM_1B", "hpcm_1b")
    model.update()
    model.set_official_numerics(True)
    x = astronaut()[..., :256, :]
    try:
        with one_thread():
            out = model.compress(x)
    finally:
        del model
    _check_streams(out, ref)


@pytest.mark.slow
def test_hpcm_base_round_trip_and_estimate():
    """Thread-invariant path: the streams still match the official ones, decoding equals the
    eval forward bit-exactly, and the real rate is within 2% of the likelihood estimate."""
    ref = official_vector("official-hpcm-base-astronaut.json")
    model = hpcm.load_model(official_formula_state_dict(), name="hpcm_base")
    x = astronaut()
    enc = encode_image(model, x)
    assert hashlib.sha256(enc.y).hexdigest() == ref["y_sha256"]
    with torch.no_grad():
        out = model(x)
    estimate = sum((-torch.log2(v)).sum() for v in out["likelihoods"].values()) / x[0, 0].numel()
    assert float(estimate) == pytest.approx(ref["estimated_bpp"], rel=1e-6)
    real = enc.num_bytes * 8 / x[0, 0].numel()
    assert abs(real - float(estimate)) / real < 0.02
    assert torch.equal(decode_image(model, enc), out["x_hat"].clamp(0, 1))


def test_tiny_round_trip_on_kodak_photos(tiny, kodak):
    for name in ("kodim01.png", "kodim04.png"):  # landscape and portrait
        x = read_image(kodak / name)
        enc = Encoded.from_bytes(encode_image(tiny, x).to_bytes())
        x_hat = decode_image(tiny, enc)
        assert x_hat.shape == x.shape
        assert torch.equal(x_hat, _forward_recon(tiny, x))
        assert enc.num_bytes > 100  # the latents are not trivial


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # every structural field HPCM-1B uses, at tiny widths
        {
            "g_outer_kernel": 2,
            "g_latent_blocks": 1,
            "g_s_blocks": (1, 1, 2),
            "h_channels": 48,
            "adaptor_blocks": (1, 1, 2),
            "prior_tail_blocks": 1,
            "partial_ratio": 2,
        },
    ],
)
def test_phi_context_models_round_trip(overrides, kodak, tmp_path):
    torch.manual_seed(3)
    model = hpcm.build_model("tiny_phi", **overrides)
    assert model.config.context == "phi" and not hasattr(model, "attn")
    path = tmp_path / "phi.pth.tar"
    atomic_torch_save(model_checkpoint(model), path)
    model = hpcm.load_model(path)  # the configuration survives a project checkpoint
    assert model.config == hpcm.build_model("tiny_phi", **overrides).config
    x = read_image(kodak / "kodim03.png")[..., :256, :512]
    enc = Encoded.from_bytes(encode_image(model, x).to_bytes())
    assert torch.equal(decode_image(model, enc), _forward_recon(model, x))


def test_odd_sizes_are_padded_and_cropped(tiny, kodak):
    x = read_image(kodak / "kodim05.png")[..., 17:350, 3:503]  # 333 x 500
    enc = encode_image(tiny, x)
    assert enc.size == (333, 500)
    x_hat = decode_image(tiny, enc)
    assert x_hat.shape == (1, 3, 333, 500)
    assert torch.equal(x_hat, _forward_recon(tiny, x))
    assert pad_to_multiple(x).shape[-2:] == (512, 512)


def test_unpadded_sizes_are_refused_with_a_clear_error(tiny):
    with pytest.raises(ValueError, match="multiples of 256"):
        tiny.compress(torch.rand(1, 3, 300, 256))


def test_batch_compress_equals_single_images(tiny, kodak):
    xs = [read_image(kodak / f"kodim0{i}.png")[..., :256, :512] for i in (2, 3)]
    batch = tiny.compress(torch.cat(xs))
    for i, x in enumerate(xs):
        single = tiny.compress(x)
        assert batch["strings"][0][i] == single["strings"][0][0]
        assert batch["strings"][1][i] == single["strings"][1][0]
    dec = tiny.decompress(batch["strings"], batch["shape"])
    assert dec["symbol_crc"] == batch["symbol_crc"]


def test_decoding_with_another_thread_count_agrees(tiny, kodak):
    x = read_image(kodak / "kodim07.png")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        enc = encode_image(tiny, x)
        reference = decode_image(tiny, enc)
        torch.set_num_threads(1)
        x_hat = decode_image(tiny, enc)  # raises CodecError on a desynchronised decode
    finally:
        torch.set_num_threads(threads)
    assert (x_hat - reference).abs().max() < 1e-5  # only the synthesis transform may differ


def test_desynchronised_decode_is_detected(tiny, kodak):
    enc = encode_image(tiny, read_image(kodak / "kodim08.png")[..., :256, :256])
    enc.symbol_crc ^= 1
    with pytest.raises(CodecError, match="desynchronised"):
        decode_image(tiny, enc)


@pytest.fixture(scope="module")
def cli_files(tiny, tmp_path_factory, kodak):
    d = tmp_path_factory.mktemp("cli")
    atomic_torch_save(model_checkpoint(tiny), d / "tiny.pth.tar")
    x = read_image(kodak / "kodim09.png")[..., :300, :260]
    Image.fromarray(x[0].mul(255).round().byte().permute(1, 2, 0).numpy()).save(d / "in.png")
    assert (
        main(
            [
                "encode",
                str(d / "in.png"),
                str(d / "x.hpcm"),
                "--checkpoint",
                str(d / "tiny.pth.tar"),
            ]
        )
        == 0
    )
    return d


def test_cli_round_trip(cli_files, capsys):
    d = cli_files
    assert main(["decode", str(d / "x.hpcm"), str(d / "out.png")]) == 0
    out = np.array(Image.open(d / "out.png"))
    assert out.shape == (300, 260, 3)
    assert "out.png" in capsys.readouterr().out


def test_cli_round_trip_with_a_shipped_checkpoint(tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    coded = tmp_path / "x.hpcm"
    args = ["encode", str(tmp_path / "in.png"), str(coded), "--checkpoint", "pretrained:tiny_base"]
    assert main(args) == 0
    # The header names pretrained:tiny_base; decoding finds it without --checkpoint.
    assert main(["decode", str(coded), str(tmp_path / "out.png")]) == 0
    assert np.array(Image.open(tmp_path / "out.png")).shape == (64, 96, 3)


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[: len(b) - 7], "truncated"),
        (lambda b: b[:20], "truncated"),
        (lambda b: b[:-3] + bytes([b[-3] ^ 0xFF]) + b[-2:], "corrupt HPCM payload"),
        (lambda b: b"\x89PNG" + b[4:], "not an HPCM file"),
        (lambda b: b"", "not an HPCM file"),
        (lambda b: b[:4] + b"\x09" + b[5:], "unsupported HPCM file version"),
    ],
)
def test_cli_rejects_bad_files(cli_files, capsys, mangle, message):
    bad = cli_files / "bad.hpcm"
    bad.write_bytes(mangle((cli_files / "x.hpcm").read_bytes()))
    assert main(["decode", str(bad), str(cli_files / "bad.png")]) == 1
    assert message in _one_line_error(capsys)
    assert not (cli_files / "bad.png").exists()


def test_cli_rejects_other_weights_and_missing_files(cli_files, capsys):
    other = hpcm.build_model("tiny")
    atomic_torch_save(model_checkpoint(other), cli_files / "other.pth.tar")
    args = ["decode", str(cli_files / "x.hpcm"), str(cli_files / "o.png")]
    assert main([*args, "--checkpoint", str(cli_files / "other.pth.tar")]) == 1
    assert "other weights" in _one_line_error(capsys)
    assert main(["decode", str(cli_files / "missing.hpcm"), "o.png"]) == 1
    assert "cannot read" in _one_line_error(capsys)
    (cli_files / "junk.pth.tar").write_bytes(b"junk")
    assert main([*args, "--checkpoint", str(cli_files / "junk.pth.tar")]) == 1
    assert "cannot read checkpoint" in _one_line_error(capsys)


def test_module_entrypoint_help():
    out = subprocess.run(
        [sys.executable, "-m", "hpcm.codec", "--help"], capture_output=True, text=True, check=True
    )
    assert "encode" in out.stdout and "decode" in out.stdout


def test_weights_fingerprint_follows_in_place_updates():
    model = hpcm.build_model("tiny")
    before = model.weights_fingerprint()
    assert model.weights_fingerprint() == before
    with torch.no_grad():
        model.g_s[0].weight.add_(1e-3)  # e.g. an optimizer step after an encode
    assert model.weights_fingerprint() != before


def test_a_plan_first_built_in_inference_mode_serves_training() -> None:
    # The plan cache is shared: evaluation (inference mode) may build a shape's plan first,
    # and a later training forward of that shape saves its masks for the backward.
    torch.manual_seed(0)
    model = hpcm.build_model("tiny", M=40)  # a latent shape no other test builds first
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        model.eval()(x)
    out = model.train()(x)
    out["x_hat"].mean().backward()  # raises if the plan's masks were inference tensors
    grad = model.g_a[0].weight.grad  # through the context model's masked walk
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_caller_numeric_settings_do_not_change_the_streams(tiny, kodak):
    # compress/decompress pin deterministic cuDNN, no autotuning and IEEE fp32 matmuls (on this
    # CPU "medium" switches oneDNN's fp32 matmul to bf16) and restore the caller's settings.
    x = read_image(kodak / "kodim09.png")[..., :256, :512]
    reference = tiny.compress(x)
    recon = tiny.decompress(reference["strings"], reference["shape"])["x_hat"]
    cudnn, saved = torch.backends.cudnn, torch.get_float32_matmul_precision()
    try:
        cudnn.benchmark = True
        torch.set_float32_matmul_precision("medium")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny.compress(x)
            dec = tiny.decompress(out["strings"], out["shape"])
        assert out["strings"] == reference["strings"]
        assert dec["symbol_crc"] == reference["symbol_crc"]
        assert torch.equal(dec["x_hat"], recon)
        assert cudnn.benchmark and not cudnn.deterministic  # the caller's, restored
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.backends.mkldnn.matmul.fp32_precision != "ieee"
    finally:
        cudnn.benchmark = False
        torch.set_float32_matmul_precision(saved)
