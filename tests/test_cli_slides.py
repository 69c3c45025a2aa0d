"""The ``info`` and ``tile`` commands, run through ``histo_gedl.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from histo_gedl.cli import main
from histo_gedl.config import bundled_data_dir

SAMPLE = bundled_data_dir() / "sample" / "cmu-1-small-region.svs"


def _error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """Return stderr after checking that it is one error line of ``command``."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"histo-gedl {command}: error: ")
    return lines[0]


def test_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "backend: openslide" in out
    assert "dimensions: 2220 x 2967 px" in out
    assert "mpp: 0.499 µm/px" in out
    assert "objective power: 20x" in out
    assert "label (387 x 463)" in out


def test_info_json_levels(slides_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json", str(slides_dir / "cmu-1-small-region_pyramid.ome.tif")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "tifffile"
    assert info["dimensions"] == [2220, 2967]
    assert info["mpp"] == pytest.approx(0.499)
    assert [level["dimensions"][0] for level in info["levels"]] == [2220, 1110, 555, 278]
    assert info["levels"][1]["mpp"] == pytest.approx(0.998, rel=1e-3)


def test_info_unknown_mpp(slides_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(slides_dir / "tcga-cr-7395-01a-01-ts1.svs")]) == 0
    assert "mpp: unknown (pass --slide-mpp)" in capsys.readouterr().out


def test_info_slide_mpp(slides_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    assert main(["info", "--json", "--slide-mpp", "1.0", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] == 1.0
    assert info["levels"][1]["mpp"] == pytest.approx(2.0005, abs=1e-3)


def test_info_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.svs"
    assert main(["info", str(path)]) == 2
    assert str(path) in _error_line(capsys, "info")


def test_tile_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "tiles"
    assert main(["tile", str(SAMPLE), "--out", str(out_dir), "--mpp", "2", "--tile-size", "128"]) == 0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    count = len(manifest["tiles"])
    out = capsys.readouterr().out
    assert f"wrote {count} tiles of 128 px at 2 µm/px to {out_dir / 'tiles'}" in out
    assert str(out_dir / "manifest.json") in out
    assert (out_dir / "thumbnail.png").exists()
    assert len(list((out_dir / "tiles").glob("*.png"))) == count
    assert count > 0


def test_tile_min_tissue(tmp_path: Path) -> None:
    out_dir = tmp_path / "tiles"
    args = ["tile", str(SAMPLE), "--out", str(out_dir), "--mpp", "4", "--tile-size", "64"]
    assert main([*args, "--min-tissue", "0.6"]) == 0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert all(tile["tissue_fraction"] >= 0.6 for tile in manifest["tiles"])


def test_tile_overlap(tmp_path: Path) -> None:
    out_dir = tmp_path / "tiles"
    args = ["tile", str(SAMPLE), "--out", str(out_dir), "--mpp", "4", "--tile-size", "64", "--overlap", "16"]
    assert main(args) == 0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert {tile["col"] % 48 for tile in manifest["tiles"]} == {0}


def test_tile_missing_mpp(slides_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "tiles"
    path = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    assert main(["tile", str(path), "--out", str(out_dir)]) == 2
    line = _error_line(capsys, "tile")
    assert "--slide-mpp" in line
    assert str(path) in line
    assert not out_dir.exists()


def test_tile_slide_mpp(slides_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "tiles"
    path = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    args = ["tile", str(path), "--out", str(out_dir), "--slide-mpp", "1.0", "--mpp", "8", "--tile-size", "64"]
    assert main(args) == 0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["slide"]["mpp"] == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mpp", "0"], "invalid mpp 0.0"),
        (["--mpp=-1"], "invalid mpp -1.0"),
        (["--slide-mpp", "0"], "invalid slide_mpp 0.0"),
        (["--tile-size", "64", "--overlap", "64"], "tile size 64 must be larger than the overlap 64"),
        (["--tile-size", "64", "--overlap", "100"], "tile size 64 must be larger than the overlap 100"),
        (["--tile-size", "0"], "invalid tile size 0"),
        (["--min-tissue", "2"], "invalid minimum tissue fraction 2.0"),
    ],
)
def test_tile_bad_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    out_dir = tmp_path / "tiles"
    assert main(["tile", str(SAMPLE), "--out", str(out_dir), *options]) == 2
    assert message in _error_line(capsys, "tile")
    assert not out_dir.exists()


def _bad_slides(tmp_path: Path, slides_dir: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty.svs"
    empty.touch()
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    truncated = tmp_path / "truncated.svs"
    data = (slides_dir / "cmu-1-small-region.svs").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    folder = tmp_path / "folder"
    folder.mkdir()
    return {
        "missing": (tmp_path / "absent.svs", "slide file not found"),
        "folder": (folder, "is a folder, not a slide file"),
        "empty": (empty, "is empty (0 bytes)"),
        "text": (text, "cannot read"),
        "truncated": (truncated, "cannot read"),
        "dicom": (slides_dir / "small_dicom.dcm", "cannot read"),
    }


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "text", "truncated", "dicom"])
def test_tile_bad_slide(
    slides_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    path, message = _bad_slides(tmp_path, slides_dir)[case]
    out_dir = tmp_path / "out" / "tiles"
    assert main(["tile", str(path), "--out", str(out_dir)]) == 2
    line = _error_line(capsys, "tile")
    assert message in line
    assert str(path) in line
    assert not (tmp_path / "out").exists()


def test_tile_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "tiles"
    out_dir.mkdir()
    (out_dir / "old.txt").write_text("old")
    args = ["tile", str(SAMPLE), "--out", str(out_dir), "--mpp", "8", "--tile-size", "64"]
    assert main(args) == 2
    assert "--overwrite" in _error_line(capsys, "tile")
    assert (out_dir / "old.txt").exists()
    assert main([*args, "--overwrite"]) == 0
    assert not (out_dir / "old.txt").exists()


@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        ("info", ["--json", "micrometres per pixel"]),
        ("tile", ["micrometres per pixel", "pixels at --mpp", "from 0 to 1", "default: 256"]),
    ],
)
def test_help_units(capsys: pytest.CaptureFixture[str], command: str, phrases: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for phrase in phrases:
        assert phrase in out


def test_tile_mpp_coarser_than_slide(tmp_path, capsys):
    from histo_gedl.cli import main
    from histo_gedl.config import bundled_data_dir

    sample = bundled_data_dir() / "sample" / "cmu-1-small-region.svs"
    code = main(["tile", str(sample), "--out", str(tmp_path / "tiles"), "--mpp", "20"])
    assert code == 2
    assert "not a magnification" in capsys.readouterr().err
    assert not (tmp_path / "tiles").exists()
