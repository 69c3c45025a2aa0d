"""Tile planning on a grid at the target mpp, and writing tiles to a folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_gedl.errors import InvalidParameterError, MissingMppError
from histo_gedl.slides import TilePlan, detect_tissue, open_slide, plan_tiles, write_tiles
from histo_gedl.slides.tiling import grid_origins


@pytest.fixture(scope="module")
def cmu(slides_dir: Path):
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        yield slide


@pytest.fixture(scope="module")
def cmu_tissue(cmu):
    return detect_tissue(cmu)


def test_grid_origins_cover() -> None:
    assert grid_origins(1000, 256, 256) == [0, 256, 512, 768]
    assert grid_origins(1024, 256, 256) == [0, 256, 512, 768]
    assert grid_origins(1025, 256, 256) == [0, 256, 512, 768, 1024]
    assert grid_origins(100, 256, 256) == [0]
    assert grid_origins(600, 256, 192) == [0, 192, 384]


def test_plan_covers_slide(cmu) -> None:
    plans = plan_tiles(cmu, mpp=1.0, tile_size=200, overlap=40)
    width_out = 2220 * 0.499 / 1.0
    height_out = 2967 * 0.499 / 1.0
    cols = sorted({plan.col for plan in plans})
    rows = sorted({plan.row for plan in plans})
    assert cols == list(range(0, cols[-1] + 1, 160))
    assert rows == list(range(0, rows[-1] + 1, 160))
    # The last column and row reach past the edge; one fewer would not.
    assert cols[-1] + 200 >= width_out
    assert cols[-2] + 200 < width_out
    assert rows[-1] + 200 >= height_out
    assert len(plans) == len(cols) * len(rows)


def test_plan_fields(cmu) -> None:
    plans = plan_tiles(cmu, mpp=1.0, tile_size=200, overlap=40)
    scale = 1.0 / 0.499
    assert [plan.index for plan in plans] == list(range(len(plans)))
    for plan in plans:
        assert plan.location == (plan.col * scale, plan.row * scale)
        assert plan.size == (200, 200)
        assert plan.mpp == 1.0
        assert plan.tissue_fraction is None


def test_plan_row_major(cmu) -> None:
    plans = plan_tiles(cmu, mpp=2.0, tile_size=128)
    order = [(plan.row, plan.col) for plan in plans]
    assert order == sorted(order)


def test_plan_keeps_tissue(cmu, cmu_tissue) -> None:
    every = plan_tiles(cmu, mpp=0.5, tile_size=256)
    kept = plan_tiles(cmu, mpp=0.5, tile_size=256, tissue=cmu_tissue)
    assert 0 < len(kept) < len(every)
    for plan in kept:
        assert plan.tissue_fraction > 0


def test_plan_min_tissue(cmu, cmu_tissue) -> None:
    touching = plan_tiles(cmu, mpp=0.5, tile_size=256, tissue=cmu_tissue)
    mostly = plan_tiles(cmu, mpp=0.5, tile_size=256, tissue=cmu_tissue, min_tissue_fraction=0.5)
    assert 0 < len(mostly) < len(touching)
    for plan in mostly:
        assert plan.tissue_fraction >= 0.5


def test_edge_tile_padded(cmu) -> None:
    plans = plan_tiles(cmu, mpp=0.5, tile_size=256)
    last = plans[-1]
    tile = last.read(cmu)
    inside_width = math.ceil(2220 * 0.499 / 0.5) - last.col
    inside_height = math.ceil(2967 * 0.499 / 0.5) - last.row
    assert 0 < inside_width < 256
    assert 0 < inside_height < 256
    # Pixels beyond the blur's reach past the edge are pure white.
    assert np.all(tile[:, inside_width + 2 :] == 255)
    assert np.all(tile[inside_height + 2 :, :] == 255)


def test_tiles_match_large_read(cmu) -> None:
    plans = plan_tiles(cmu, mpp=0.8, tile_size=100, overlap=30)
    large = cmu.read_region((0, 0), (370, 370), 0.8)
    for plan in plans:
        if plan.col + 100 <= 370 and plan.row + 100 <= 370:
            piece = large[plan.row : plan.row + 100, plan.col : plan.col + 100]
            assert np.abs(plan.read(cmu).astype(int) - piece).max() <= 1


def test_missing_mpp(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        with pytest.raises(MissingMppError):
            plan_tiles(slide, mpp=0.5, tile_size=256)


@pytest.mark.parametrize(
    ("tile_size", "overlap", "message"),
    [
        (0, 0, "invalid tile size 0"),
        (-5, 0, "invalid tile size -5"),
        (64.5, 0, "invalid tile size 64.5"),
        (64, -1, "invalid overlap -1"),
        (64, 64, "tile size 64 must be larger than the overlap 64"),
        (64, 100, "tile size 64 must be larger than the overlap 100"),
    ],
)
def test_invalid_grid(cmu, tile_size: object, overlap: object, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        plan_tiles(cmu, mpp=0.5, tile_size=tile_size, overlap=overlap)  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan])
def test_invalid_min_tissue(cmu, cmu_tissue, fraction: float) -> None:
    with pytest.raises(InvalidParameterError, match="invalid minimum tissue fraction"):
        plan_tiles(cmu, 0.5, 256, tissue=cmu_tissue, min_tissue_fraction=fraction)


def test_min_tissue_needs_mask(cmu) -> None:
    with pytest.raises(InvalidParameterError, match="needs a tissue mask"):
        plan_tiles(cmu, 0.5, 256, min_tissue_fraction=0.2)


def test_invalid_target_mpp(cmu) -> None:
    with pytest.raises(InvalidParameterError, match="invalid mpp -0.5"):
        plan_tiles(cmu, -0.5, 256)


def _no_staging_left(folder: Path) -> bool:
    return not [path for path in folder.iterdir() if path.name.startswith(".")]


def test_write_tiles(cmu, cmu_tissue, tmp_path: Path) -> None:
    plans = plan_tiles(cmu, mpp=2.0, tile_size=128, tissue=cmu_tissue)
    out_dir = write_tiles(cmu, plans, tmp_path / "out")
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["slide"]["mpp"] == 0.499
    assert manifest["slide"]["dimensions"] == [2220, 2967]
    assert len(manifest["tiles"]) == len(plans)
    for record, plan in zip(manifest["tiles"], plans):
        assert record["location"] == list(plan.location)
        assert record["size"] == [128, 128]
        assert record["mpp"] == 2.0
        assert record["tissue_fraction"] == plan.tissue_fraction
        with Image.open(out_dir / record["file"]) as image:
            assert np.array_equal(np.asarray(image), plan.read(cmu))
    assert len(list((out_dir / "tiles").iterdir())) == len(plans)
    assert _no_staging_left(tmp_path)


def test_write_thumbnail_grid(cmu, tmp_path: Path) -> None:
    plans = plan_tiles(cmu, mpp=4.0, tile_size=64)
    out_dir = write_tiles(cmu, plans, tmp_path / "out", thumbnail_size=300)
    with Image.open(out_dir / "thumbnail.png") as image:
        thumbnail = np.asarray(image)
    assert max(thumbnail.shape[:2]) == 300
    # The grid is drawn in green: column 0 of the thumbnail is a tile border.
    green = (thumbnail[:, :, 1] == 160) & (thumbnail[:, :, 0] == 0)
    assert green[:, 0].mean() > 0.9


def test_write_existing_folder(cmu, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("old")
    plans = plan_tiles(cmu, mpp=8.0, tile_size=64)[:2]
    with pytest.raises(InvalidParameterError, match="already exists and is not empty"):
        write_tiles(cmu, plans, out_dir)
    assert (out_dir / "keep.txt").read_text() == "old"


def test_write_overwrite(cmu, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "old.txt").write_text("old")
    plans = plan_tiles(cmu, mpp=8.0, tile_size=64)[:2]
    write_tiles(cmu, plans, out_dir, overwrite=True)
    assert not (out_dir / "old.txt").exists()
    assert (out_dir / "manifest.json").exists()
    assert _no_staging_left(tmp_path)


def test_write_empty_folder(cmu, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    write_tiles(cmu, plan_tiles(cmu, mpp=8.0, tile_size=64)[:2], out_dir)
    assert (out_dir / "manifest.json").exists()


def test_write_to_file_path(cmu, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(InvalidParameterError, match="is a file"):
        write_tiles(cmu, plan_tiles(cmu, mpp=8.0, tile_size=64)[:2], path)


def test_write_failure_cleans_up(cmu, tmp_path: Path) -> None:
    good = plan_tiles(cmu, mpp=8.0, tile_size=64)[:2]
    broken = TilePlan(
        index=2, col=0, row=0, location=(0.0, 0.0), size=(0, 0), mpp=8.0, tissue_fraction=None
    )
    out_dir = tmp_path / "new" / "parents" / "out"
    with pytest.raises(InvalidParameterError, match="invalid size"):
        write_tiles(cmu, [*good, broken], out_dir)
    assert not (tmp_path / "new").exists()
    assert _no_staging_left(tmp_path)


def test_write_failure_keeps_old(cmu, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "old.txt").write_text("old")
    broken = TilePlan(
        index=0, col=0, row=0, location=(0.0, 0.0), size=(0, 0), mpp=8.0, tissue_fraction=None
    )
    with pytest.raises(InvalidParameterError):
        write_tiles(cmu, [broken], out_dir, overwrite=True)
    assert (out_dir / "old.txt").read_text() == "old"
    assert _no_staging_left(tmp_path)


def test_progress_bar(cmu, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = plan_tiles(cmu, mpp=8.0, tile_size=64)[:2]
    write_tiles(cmu, plans, tmp_path / "quiet")
    assert "tiles" not in capsys.readouterr().err
    write_tiles(cmu, plans, tmp_path / "shown", progress=True)
    assert "2/2" in capsys.readouterr().err
