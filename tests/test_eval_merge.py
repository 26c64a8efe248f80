"""python -m hpcm.eval.merge: a curve evaluated in parts joins into the curve of one evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcm.eval import merge, report

IMAGES = ["a.png", "b.png", "c.png"]


def curve(points: list[tuple[float, float]], name: str = "adam", seed: int = 0) -> dict:
    """An evaluate.py curve of (lambda, bpp) points, every image a small offset of the mean."""
    points = sorted(points, key=lambda p: p[1])
    per_bpp = [[bpp * (1 + 0.1 * (i - 1)) for i in range(len(IMAGES))] for _, bpp in points]
    per_psnr = [[20 + 40 * bpp + i for i in range(len(IMAGES))] for _, bpp in points]
    return {
        "name": name,
        "description": "Inference (ans) on /data/kodak (3 images, cpu); MS-SSIM ...",
        "seed": seed,
        "results": {
            "bpp": [sum(row) / len(row) for row in per_bpp],
            "psnr-rgb": [sum(row) / len(row) for row in per_psnr],
        },
        "checkpoints": [
            f"runs/{name}_{lmbda}_seed{seed}/epoch_best.pth.tar" for lmbda, _ in points
        ],
        "lambda": [lmbda for lmbda, _ in points],
        "per_image": {"images": IMAGES, "bpp": per_bpp, "psnr-rgb": per_psnr},
    }


POINTS = [(0.00025, 0.024), (0.00035, 0.034), (0.0005, 0.043), (0.001, 0.07), (0.0015, 0.09)]


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_parts_join_into_the_whole_curve(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Evaluated first at three lambdas, extended later by two: the join equals the curve of
    # one evaluation of all five, per-image values in the same order (the bootstrap's input).
    old = write(tmp_path / "old.json", curve(POINTS[:3]))
    new = write(tmp_path / "new.json", curve([POINTS[4], POINTS[3]]))
    out = tmp_path / "merged" / "adam_seed0.json"
    assert merge.main([str(new), str(old), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == curve(POINTS)
    assert "adam (seed 0), 5 points" in capsys.readouterr().out
    # The joined file reads as any evaluate.py curve: five points and their images.
    loaded = report.load_curves(str(out))[0]
    assert loaded.bpp == pytest.approx(sorted(bpp for _, bpp in POINTS))


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (curve(POINTS[3:], name="adam_cautious"), "name 'adam_cautious' differs"),
        (curve(POINTS[3:], seed=1), "seed 1 differs"),
        (curve(POINTS[2:]), "lambda 0.0005 is in more than one part"),
    ],
)
def test_parts_of_different_curves_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, other: dict, message: str
) -> None:
    old = write(tmp_path / "old.json", curve(POINTS[:3]))
    new = write(tmp_path / "new.json", other)
    assert merge.main([str(old), str(new), "-o", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "m.json").exists()


def test_other_measurement_or_images_are_refused(tmp_path: Path) -> None:
    estimated = curve(POINTS[3:])
    estimated["description"] = "Inference (entropy estimation) on /data/kodak (3 images, cpu)"
    other_images = curve(POINTS[3:])
    other_images["per_image"]["images"] = ["x.png", "y.png", "z.png"]
    old = (tmp_path / "old.json", curve(POINTS[:3]))
    with pytest.raises(merge.MergeError, match="rate measurement 'entropy estimation'"):
        merge.merge_curves([old, (tmp_path / "new.json", estimated)])
    with pytest.raises(merge.MergeError, match="other test images than"):
        merge.merge_curves([old, (tmp_path / "new.json", other_images)])
    # Another path to the same images on another machine is the same measurement.
    moved = curve(POINTS[3:])
    moved["description"] = moved["description"].replace("/data/kodak", "/mnt/kodak")
    merged = merge.merge_curves([old, (tmp_path / "new.json", moved)])
    assert len(merged["lambda"]) == 5 and "/mnt/kodak" in merged["description"]
