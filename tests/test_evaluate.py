"""evaluate.py: real bitstreams on Kodak images with tiny-model checkpoints, JSON/CSV outputs,
grouping of run and sweep directories, and the one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from official_weights import VECTORS, astronaut, official_formula_state_dict
from PIL import Image

import hpcm
from hpcm.codec import encode_image, read_image
from hpcm.codec.checkpoint import CheckpointError, atomic_torch_save, model_checkpoint
from hpcm.eval import evaluate as evaluation
from hpcm.eval import report
from hpcm.eval.evaluate import RunInfo, assign_groups, find_checkpoints, main, read_run_info
from hpcm.metrics import psnr_8bit
from hpcm.run_layout import BEST_CHECKPOINT, LAST_CHECKPOINT
from hpcm.train.export import export

# (run dir, optimizer, lambda, gain of g_a's last conv): gains of 3 to 4 give the random tiny
# model 0.2-0.45 bpp with latents its entropy model predicts well (estimate within ~2%).
RUNS = [("0", "adam", 0.013, 4.0), ("1", "balanced", 0.0067, 3.5), ("2", "adam", 0.0035, 3.0)]


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on a shared 2-core machine are many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_checkpoint(gain: float, config: dict | None = None, name: str = "tiny") -> dict:
    torch.manual_seed(0)
    model = hpcm.build_model(name)
    with torch.no_grad():  # wake the random latents up: y and z become non-trivial
        model.g_a[-1].weight.mul_(gain)
        model.h_a[-1].weight.mul_(10.0)
    ckpt = model_checkpoint(model)
    if config is not None:
        ckpt["config"] = config
    return ckpt


def make_sweep(root: Path) -> Path:
    for run, optimizer, lmbda, gain in RUNS:
        config = {"optimizer": {"name": optimizer, "lr": 1e-4}, "lmbda": lmbda, "metric": "mse"}
        atomic_torch_save(tiny_checkpoint(gain, config), root / run / "epoch_best.pth.tar")
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, kodak) -> dict:
    """The sweep evaluated once with real coding and once with the entropy estimate."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    sweep = make_sweep(root / "sweep")
    out = {"sweep": sweep, "real": root / "real", "est": root / "est"}
    base = [str(sweep), "--dataset", str(kodak), "--limit", "2", "--device", "cpu", "--jobs", "1"]
    assert main([*base, "--out", str(out["real"])]) == 0
    assert main([*base, "--out", str(out["est"]), "--entropy-estimation"]) == 0
    return out


def test_json_per_group_in_compressai_format(evaluated) -> None:
    files = sorted(p.name for p in evaluated["real"].glob("*.json"))
    assert files == ["adam.json", "balanced.json"]
    adam = json.loads((evaluated["real"] / "adam.json").read_text())
    assert adam["name"] == "adam" and "ans" in adam["description"]
    assert "MS-SSIM on the float reconstruction" in adam["description"]
    for plot in ("rd_psnr.png", "rd_msssim.png"):  # beside the JSON, every group drawn
        assert (evaluated["real"] / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = adam["results"]
    keys = ["bpp", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-db", "encoding_time", "decoding_time"]
    assert sorted(results) == sorted(keys)
    assert all(len(results[k]) == 2 for k in keys)
    assert results["bpp"] == sorted(results["bpp"]) and results["bpp"][0] < results["bpp"][1]
    assert adam["lambda"] == [0.0035, 0.013]  # the lower lambda is the lower rate here
    assert [Path(c).parent.name for c in adam["checkpoints"]] == ["2", "0"]  # by bpp
    assert all(t > 0 for t in results["encoding_time"] + results["decoding_time"])
    assert all(0 < m < 1 for m in results["ms-ssim-rgb"])
    curve = report.load_curves(str(evaluated["real"] / "adam.json"))[0]  # bdrate.py reads it
    assert curve.bpp == results["bpp"]


def test_csv_rows_and_real_bpp_from_the_bitstream(evaluated, kodak) -> None:
    rows = read_csv(evaluated["real"] / evaluation.CSV_NAME)
    assert list(rows[0]) == list(evaluation.CSV_FIELDS)
    assert [(r["group"], r["image"]) for r in rows] == [
        (group, image)
        for group in ("adam", "balanced", "adam")
        for image in ("kodim01.png", "kodim02.png")
    ]
    assert {r["lambda"] for r in rows} == {"0.0035", "0.0067", "0.013"}
    # bpp = (y + z stream bytes) * 8 / original pixels, no header (official protocol)
    ckpt = evaluated["sweep"] / "1" / "epoch_best.pth.tar"
    model = hpcm.load_model(ckpt)
    row = next(r for r in rows if r["lambda"] == "0.0067" and r["image"] == "kodim02.png")
    x = read_image(kodak / "kodim02.png")
    with torch.inference_mode():
        encoded = encode_image(model, x)
    assert float(row["bpp"]) == (len(encoded.y) + len(encoded.z)) * 8 / (512 * 768)
    assert len(encoded.to_bytes()) > encoded.num_bytes  # the container header is not counted
    # the JSON point is the mean over the images
    balanced = json.loads((evaluated["real"] / "balanced.json").read_text())["results"]
    bal_rows = [r for r in rows if r["group"] == "balanced"]
    for key, column in [("bpp", "bpp"), ("psnr-rgb", "psnr"), ("ms-ssim-db", "ms_ssim_db")]:
        mean = sum(float(r[column]) for r in bal_rows) / 2
        assert balanced[key][0] == pytest.approx(mean, rel=1e-12)


def test_entropy_estimate_is_close_to_the_real_rate(evaluated) -> None:
    for group in ("adam", "balanced"):
        real = json.loads((evaluated["real"] / f"{group}.json").read_text())
        est = json.loads((evaluated["est"] / f"{group}.json").read_text())
        assert "entropy estimation" in est["description"]
        assert est["checkpoints"] == real["checkpoints"]
        for r_bpp, e_bpp in zip(real["results"]["bpp"], est["results"]["bpp"], strict=True):
            assert r_bpp > 0.15
            assert e_bpp == pytest.approx(r_bpp, rel=0.03)
            assert e_bpp != r_bpp  # really a different measurement
        # decoding reproduces the forward pass's reconstruction
        psnr_real, psnr_est = real["results"]["psnr-rgb"], est["results"]["psnr-rgb"]
        assert psnr_est == pytest.approx(psnr_real, abs=0.01)


def test_forced_group_and_single_files(evaluated, kodak, tmp_path, capsys) -> None:
    sweep = evaluated["sweep"]
    files = [str(sweep / run / "epoch_best.pth.tar") for run in ("2", "0")]
    argv = [*files, files[0], "--dataset", str(kodak), "--limit", "1", "--jobs", "1"]
    argv += ["--out", str(tmp_path)]
    assert main([*argv, "--group", "mine"]) == 0
    assert [p.name for p in tmp_path.glob("*.json")] == ["mine.json"]
    mine = json.loads((tmp_path / "mine.json").read_text())
    assert len(mine["results"]["bpp"]) == 2  # a file named twice is evaluated once
    assert mine["lambda"] == [0.0035, 0.013]
    assert "mine:" in capsys.readouterr().out


def test_small_padded_image_counts_original_pixels(tmp_path, kodak, capsys) -> None:
    """150x200 is padded to 256x256 for coding; bpp still counts 150*200 pixels, and MS-SSIM
    (which needs sides > 160 px) is left out of the JSON rather than written as NaN."""
    data = tmp_path / "small"
    data.mkdir()
    Image.open(kodak / "kodim03.png").crop((300, 100, 500, 250)).save(data / "crop.png")
    ckpt = tiny_checkpoint(3.0, {"optimizer": "adam"})
    atomic_torch_save(ckpt, tmp_path / "run" / "last.pth.tar")
    argv = [str(tmp_path / "run"), "--dataset", str(data), "--out"]
    assert main([*argv, str(tmp_path / "real")]) == 0
    assert "MS-SSIM needs both image sides > 160 px" in capsys.readouterr().err
    results = json.loads((tmp_path / "real" / "adam.json").read_text())["results"]
    assert "ms-ssim-rgb" not in results and "ms-ssim-db" not in results
    row = read_csv(tmp_path / "real" / evaluation.CSV_NAME)[0]
    assert row["ms_ssim"] == row["ms_ssim_db"] == row["lambda"] == ""
    assert float(row["psnr"]) > 0 and float(row["bpp"]) == results["bpp"][0]
    with torch.inference_mode():
        encoded = encode_image(hpcm.load_model(ckpt), read_image(data / "crop.png"))
    assert results["bpp"][0] == encoded.num_bytes * 8 / (150 * 200)
    assert main([*argv, str(tmp_path / "est"), "--entropy-estimation"]) == 0
    est = json.loads((tmp_path / "est" / "adam.json").read_text())["results"]["bpp"][0]
    assert est == pytest.approx(results["bpp"][0], rel=0.05)


def test_parallel_jobs_give_the_results_of_one(kodak, tmp_path) -> None:
    """--jobs 2 codes the (checkpoint, image) items in two processes: bpp, PSNR and MS-SSIM of
    every image, the CSV's row order and the JSON curves are those of --jobs 1."""
    data = tmp_path / "crops"
    data.mkdir()
    for n, box in enumerate([(0, 0, 256, 192), (300, 100, 492, 356), (500, 200, 756, 456)]):
        Image.open(kodak / f"kodim0{n + 1}.png").crop(box).save(data / f"crop{n}.png")
    for run, gain in (("a", 3.0), ("b", 4.0)):
        ckpt = tiny_checkpoint(gain, {"optimizer": {"name": "adam"}, "lmbda": gain / 100})
        atomic_torch_save(ckpt, tmp_path / "sweep" / run / "epoch_best.pth.tar")
    argv = [str(tmp_path / "sweep"), "--dataset", str(data), "--device", "cpu", "--out"]
    assert main([*argv, str(tmp_path / "one"), "--jobs", "1"]) == 0
    assert main([*argv, str(tmp_path / "two"), "--jobs", "2"]) == 0
    one, two = (read_csv(tmp_path / out / evaluation.CSV_NAME) for out in ("one", "two"))
    timed = ("enc_time", "dec_time")
    assert len(one) == 6 and all(float(row["ms_ssim"]) > 0 for row in one)
    assert [{k: v for k, v in r.items() if k not in timed} for r in two] == [
        {k: v for k, v in r.items() if k not in timed} for r in one
    ]
    curves = [json.loads((tmp_path / out / "adam.json").read_text()) for out in ("one", "two")]
    for curve in curves:
        for key in ("encoding_time", "decoding_time"):
            del curve["results"][key]
    assert curves[0] == curves[1]


def test_an_error_in_an_evaluation_process_is_one_line(tmp_path) -> None:
    atomic_torch_save(tiny_checkpoint(3.0), tmp_path / "tiny.pth.tar")
    info = RunInfo(tmp_path / "tiny.pth.tar", "tiny", official=False)
    images = [tmp_path / "gone.png", tmp_path / "lost.png"]  # deleted after the check
    evaluator = evaluation.Evaluator([info], images, torch.device("cpu"), evaluation.code_image)
    with pytest.raises(evaluation.EvaluationError) as error:
        evaluation.evaluate_items(evaluator, [(0, 0), (0, 1)], 2, 1, lambda item, r: None)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'tiny.pth.tar'} on ") and "\n" not in message
    assert "gone.png" in message or "lost.png" in message


@pytest.mark.slow
def test_official_checkpoint_matches_the_official_test_vector(tmp_path, kodak) -> None:
    """Official HPCM_Base formula weights on kodim23: the bpp the official code measured."""
    vector = json.loads((VECTORS / "official-hpcm-base-kodim23.json").read_text())
    data = tmp_path / "kodak23"
    data.mkdir()
    shutil.copy(kodak / "kodim23.png", data)
    ckpt = tmp_path / "HPCM_Base.pth.tar"
    torch.save({"state_dict": official_formula_state_dict()}, ckpt)
    out = tmp_path / "out"
    assert main([str(ckpt), "--dataset", str(data), "--out", str(out), "--device", "cpu"]) == 0
    curve = json.loads((out / "hpcm_base.json").read_text())  # model found without --model
    assert curve["results"]["bpp"] == [vector["bpp"]]
    recon = read_image(VECTORS / vector["recon_png"])  # the official 1-thread decode
    psnr = psnr_8bit(read_image(data / "kodim23.png"), recon).item()
    assert curve["results"]["psnr-rgb"][0] == pytest.approx(psnr, abs=1e-3)


@pytest.mark.slow
def test_official_phi_context_is_its_own_curve(tmp_path, kodak) -> None:
    """Official HPCM_Base and HPCM_Base_PhiContext weights in one evaluation: two curves, each
    model recognised from its keys (no --model)."""
    data = tmp_path / "crop"
    data.mkdir()
    Image.open(kodak / "kodim23.png").crop((128, 128, 384, 384)).save(data / "crop.png")
    for official in ("HPCM_Base", "HPCM_Base_PhiContext"):
        torch.save({"state_dict": official_formula_state_dict(official)}, tmp_path / official)
    paths = [str(tmp_path / "HPCM_Base"), str(tmp_path / "HPCM_Base_PhiContext")]
    out = tmp_path / "out"
    assert main([*paths, "--dataset", str(data), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["hpcm_base.json", "hpcm_phi_context.json"]
    groups = {row["group"] for row in read_csv(out / evaluation.CSV_NAME)}
    assert groups == {"hpcm_base", "hpcm_phi_context"}


# -- finding and grouping checkpoints (no coding) ------------------------------------------------
def test_find_checkpoints_in_run_and_sweep_dirs(tmp_path, capsys) -> None:
    for run in ("0", "1", "2", "10"):
        (tmp_path / "sweep" / run).mkdir(parents=True)
        (tmp_path / "sweep" / run / "last.pth.tar").touch()
    (tmp_path / "sweep" / "1" / "epoch_best.pth.tar").touch()
    (tmp_path / "sweep" / "2" / "epoch_5.pth.tar").touch()
    for run in ("0", "3"):  # Hydra's folder in every run; runs 3 and 4 saved nothing yet
        (tmp_path / "sweep" / run / ".hydra").mkdir(parents=True, exist_ok=True)
        (tmp_path / "sweep" / run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "sweep" / "4").mkdir()
    (tmp_path / "sweep" / "4" / "config.yaml").write_text("seed: 0\n")
    found = find_checkpoints([tmp_path / "sweep"])
    rel = [p.relative_to(tmp_path / "sweep").as_posix() for p in found]
    assert capsys.readouterr().err.endswith("have no checkpoint: 3, 4\n")
    assert rel == ["0/last.pth.tar", "1/epoch_best.pth.tar", "2/last.pth.tar", "10/last.pth.tar"]
    run_dir = find_checkpoints([tmp_path / "sweep" / "1", tmp_path / "sweep"])
    assert len(run_dir) == 4 and run_dir[0].name == "epoch_best.pth.tar"
    explicit = tmp_path / "sweep" / "2" / "epoch_5.pth.tar"
    assert find_checkpoints([explicit]) == [explicit]


def test_evaluate_and_export_take_the_best_else_the_last_checkpoint(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match="last.pth.tar"):  # neither: the last is missing
        export(run, tmp_path / "out.pth.tar", half=False, note="")
    with pytest.raises(evaluation.EvaluationError, match="epoch_best.pth.tar or last.pth.tar"):
        find_checkpoints([run])
    atomic_torch_save(tiny_checkpoint(3.0), run / LAST_CHECKPOINT)
    assert find_checkpoints([run]) == [run / LAST_CHECKPOINT]
    assert export(run, tmp_path / "out.pth.tar", False, "")["note"] == "exported from last.pth.tar"
    atomic_torch_save(tiny_checkpoint(4.0), run / BEST_CHECKPOINT)
    assert find_checkpoints([run]) == [run / BEST_CHECKPOINT]
    ckpt = export(run, tmp_path / "out.pth.tar", False, "")
    assert ckpt["note"] == "exported from epoch_best.pth.tar"
    best = tiny_checkpoint(4.0)["state_dict"]
    assert all(torch.equal(v, best[k]) for k, v in ckpt["state_dict"].items())


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # the trainer's layout (conf/optimizer, conf/lambda)
        (
            {"optimizer": {"name": "balanced"}, "lmbda": 0.013, "metric": "mse"},
            ("balanced", 0.013, "mse"),
        ),
        (
            {"optimizer": {"name": "adam"}, "lmbda": 2.4, "metric": "ms-ssim"},
            ("adam", 2.4, "msssim"),
        ),
        # every balancer variant is its own curve, never merged into "balanced"
        ({"optimizer": {"name": "balanced_qp"}, "lmbda": 0.0018}, ("balanced_qp", 0.0018, None)),
        ({"optimizer": {"name": "balanced_hier"}}, ("balanced_hier", None, None)),
        # also accepted
        ({"optimizer": "balanced", "lambda": 0.013}, ("balanced", 0.013, None)),
        (
            {"optimizer": {"_target_": "torch.optim.Adam"}, "lmbda": "0.0483"},
            ("adam", 0.0483, None),
        ),
        (
            {"optimizer": {"name": "SGD"}, "lmbda": "x", "metric": "MS_SSIM"},
            ("sgd", None, "msssim"),
        ),
        ({}, (None, None, None)),
    ],
)
def test_run_info_from_the_resolved_config(config, expected) -> None:
    info = read_run_info(Path("run/epoch_best.pth.tar"), {"config": config}, "tiny", False)
    assert (info.optimizer, info.lmbda, info.metric) == expected


def test_groups(capsys) -> None:
    path = Path("r/epoch_best.pth.tar")
    infos = [
        RunInfo(path, "hpcm_base", official=True),
        RunInfo(path, "tiny", False, "adam", 0.013),
        RunInfo(path, "tiny", False, "balanced", 2.4, "msssim"),
        RunInfo(path, "tiny", False, None),
    ]
    groups = [i.group for i in assign_groups(infos)]
    assert groups == ["hpcm_base", "adam", "balanced-msssim", "unknown"]
    infos.append(RunInfo(path, "hpcm_large", False, "adam"))
    groups = [i.group for i in assign_groups(infos)]
    assert groups[1:] == ["tiny-adam", "tiny-balanced-msssim", "tiny-unknown", "hpcm_large-adam"]
    assert {i.group for i in assign_groups(infos, "my run/1")} == {"my_run_1"}
    evaluation._note_repeated_lambdas(assign_groups(infos, "all"))
    assert capsys.readouterr().err == ""
    evaluation._note_repeated_lambdas(assign_groups([*infos, infos[1]], "all"))
    assert "2 checkpoints of group 'all' share lambda 0.013" in capsys.readouterr().err


# -- errors: one line on stderr, exit status 1 ---------------------------------------------------
@pytest.fixture
def tiny_run(tmp_path) -> Path:
    path = tmp_path / "run" / "epoch_best.pth.tar"
    atomic_torch_save(tiny_checkpoint(3.0, {"optimizer": {"name": "adam"}}), path)
    return path.parent


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder with one photo that ships with the dependencies (scikit-image's astronaut)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = astronaut()[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(folder / "astronaut.png")
    return folder


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_errors_for_bad_paths(tmp_path, tiny_run, photos, capsys) -> None:
    data = ["--dataset", str(photos), "--out", str(tmp_path / "o")]
    assert "no such checkpoint" in _error(capsys, [str(tmp_path / "nope"), *data])
    (tmp_path / "empty").mkdir()
    assert "no run directory" in _error(capsys, [str(tmp_path / "empty"), *data])
    missing = ["--dataset", str(tmp_path / "nodata")]
    assert "dataset folder not found" in _error(capsys, [str(tiny_run), *missing])
    a_file = ["--dataset", str(photos / "astronaut.png")]
    assert "not a folder" in _error(capsys, [str(tiny_run), *a_file])
    (tmp_path / "empty" / "README.txt").write_text("no images here")
    no_images = ["--dataset", str(tmp_path / "empty")]
    assert "no images" in _error(capsys, [str(tiny_run), *no_images])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    broken = ["--dataset", str(tmp_path / "broken")]
    assert "cannot read image" in _error(capsys, [str(tiny_run), *broken])
    assert not (tmp_path / "o").exists()  # nothing is written before every input checks out


def test_errors_for_mixed_up_checkpoints(tmp_path, tiny_run, photos, capsys) -> None:
    data = ["--dataset", str(photos), "--limit", "1", "--out", str(tmp_path / "o")]
    text = tmp_path / "notes.pth.tar"
    text.write_text("hello")
    assert "cannot read checkpoint" in _error(capsys, [str(text), *data])
    other = tmp_path / "other.pth.tar"
    torch.save({"weights": torch.zeros(3)}, other)
    assert "neither a project checkpoint" in _error(capsys, [str(other), *data])
    err = _error(capsys, [str(tiny_run), *data, "--model", "hpcm_large"])
    assert "holds model 'tiny', not 'hpcm_large'" in err
    wider = tiny_checkpoint(3.0)
    wider["model_config"]["M"] = 48  # the weights no longer fit the stated model
    atomic_torch_save(wider, tmp_path / "wider.pth.tar")
    assert "does not fit model 'tiny'" in _error(capsys, [str(tmp_path / "wider.pth.tar"), *data])
    del wider["model_name"]
    atomic_torch_save(wider, tmp_path / "broken.pth.tar")
    assert "malformed" in _error(capsys, [str(tmp_path / "broken.pth.tar"), *data])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_error_for_cuda_without_a_gpu(tiny_run, photos, capsys) -> None:
    err = _error(capsys, [str(tiny_run), "--dataset", str(photos), "--device", "cuda"])
    assert "CUDA is not available" in err


def test_limit_must_be_positive(tiny_run, photos) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_run), "--dataset", str(photos), "--limit", "0"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("metric", ["psnr", "ms-ssim"])
def test_json_goes_through_compressai_plot(evaluated, tmp_path: Path, metric: str) -> None:
    # CompressAI's plot tool (python -m compressai.utils.plot) reads our JSON as it is.
    from compressai.utils.plot.__main__ import main as compressai_plot

    out = tmp_path / f"{metric}.png"
    compressai_plot(["-f", str(evaluated["real"] / "adam.json"), "-m", metric, "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
