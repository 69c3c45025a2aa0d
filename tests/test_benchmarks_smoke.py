"""Smoke tests of the benchmark scripts: each runs in --quick mode at tiny sizes and prints its table.

The scripts run in subprocesses, as a user runs them, with one thread.
The figures are not checked, only that the run finishes, records its
setting and prints a markdown table with one row per measured case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SAMPLE_NAME = "cmu-1-small-region.svs"


def run_script(name: str, *arguments: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--quick", "--threads", "1", *arguments],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def table_rows(output: str, first_header: str) -> list[str]:
    """Return the body rows of the markdown table whose first column header is ``first_header``."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |")]
    assert len(starts) == 1, output
    assert lines[starts[0] + 1].startswith("|---|"), output
    rows = []
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("| "):
            break
        rows.append(line)
    return rows


def bench_helpers():
    """Import the synthetic-slide helpers from benchmarks/_bench_common.py."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _bench_common import RepeatedTissue, write_pyramidal_tiff
    finally:
        sys.path.remove(str(BENCHMARKS))
    return RepeatedTissue, write_pyramidal_tiff


def assert_header(output: str) -> None:
    assert "- date: " in output
    assert "- versions: histo_gedl " in output
    assert "- CPU: " in output


def test_equivariance_cost_quick():
    completed = run_script(
        "bench_equivariance_cost.py", "--size", "32", "--width", "1", "--limit-size", "16", "--repeats", "1"
    )
    assert completed.returncode == 0, completed.stderr
    assert_header(completed.stdout)
    rows = table_rows(completed.stdout, "model")
    assert [row.split("|")[1].strip() for row in rows] == ["regular C8", "steerable C8", "plain"]
    assert "of the conv limit (target at least 0.5" in completed.stdout


def test_equivariance_cost_bad_size():
    completed = run_script("bench_equivariance_cost.py", "--size", "30")
    assert completed.returncode == 2
    assert "--size must be a multiple of 2 ** depth = 8, got 30" in completed.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available, so --device cuda is accepted")
def test_cuda_without_gpu_rejected():
    completed = run_script("bench_equivariance_cost.py", "--device", "cuda")
    assert completed.returncode == 2
    assert "CUDA is not available" in completed.stderr


def test_vs_monai_quick(slides_dir):
    completed = run_script(
        "bench_vs_monai.py", "--slide", str(slides_dir / SAMPLE_NAME), "--crop", "256", "--tile-size", "256",
        "--batch-size", "2",
    )
    assert completed.returncode == 0, completed.stderr
    assert_header(completed.stdout)
    rows = table_rows(completed.stdout, "pipeline")
    assert len(rows) == 6
    assert rows[0].startswith("| MONAI SlidingWindowInferer")
    assert rows[2].startswith("| MONAI channels-last, one window per forward pass")
    assert rows[5].startswith("| histo-gedl infer command")
    # The shipped model when it exists, else the untrained stand-in.
    assert "nuclei-c8-v1" in completed.stdout or "untrained C8 regular" in completed.stdout
    assert "Prediction-only time / MONAI time: " in completed.stdout


def test_vs_monai_bad_overlap(slides_dir):
    completed = run_script("bench_vs_monai.py", "--slide", str(slides_dir / SAMPLE_NAME), "--overlap", "1")
    assert completed.returncode == 2
    assert "--overlap must be from 0 to below 1, got 1.0" in completed.stderr


def test_memory_scaling_quick(slides_dir, tmp_path):
    sample = tmp_path / "sample-crop.tiff"
    from histo_gedl.slides import open_slide

    RepeatedTissue, write_pyramidal_tiff = bench_helpers()
    with open_slide(slides_dir / SAMPLE_NAME) as slide:
        image = slide.read_region((800, 1200), (512, 512), slide.mpp)
        mpp = slide.mpp
    write_pyramidal_tiff(sample, 512, 512, RepeatedTissue(image, 1).read, 1, mpp)

    completed = run_script(
        "bench_memory_scaling.py", "--sample", str(sample), "--size", "1536", "--work-dir", str(tmp_path / "work"),
    )
    assert completed.returncode == 0, completed.stderr
    assert_header(completed.stdout)
    rows = table_rows(completed.stdout, "slide")
    assert len(rows) == 2
    assert "| 1536x1536 |" in rows[1]
    assert "2 levels" in completed.stdout
    assert "untrained C8 regular, width 1, depth 3" in completed.stdout


def test_synthetic_pyramid_reads_back(slides_dir, tmp_path):
    from histo_gedl.slides import open_slide

    RepeatedTissue, write_pyramidal_tiff = bench_helpers()
    with open_slide(slides_dir / SAMPLE_NAME) as slide:
        image = slide.read_region((0, 0), (640, 640), slide.mpp)
        mpp = slide.mpp
    source = RepeatedTissue(image, 3)
    path = write_pyramidal_tiff(tmp_path / "pyramid.tiff", 1500, 1100, source.read, 3, mpp)

    with open_slide(path) as written:
        assert written.backend == "openslide"
        assert written.level_dimensions == ((1500, 1100), (750, 550), (375, 275))
        assert written.mpp == pytest.approx(mpp, rel=1e-3)
        # Past the 640 px pattern the image is mirrored, so column 700 repeats column 579.
        level0 = written.read_region((600, 0), (200, 200), mpp).astype(int)
        expected0 = np.concatenate([image[:200, 600:640], image[:200, 639:479:-1]], axis=1)
        assert np.abs(level0 - expected0).mean() < 3
        level2 = written.read_region((0, 0), (160, 160), 4 * mpp).astype(int)
        expected2 = image.reshape(160, 4, 160, 4, 3).mean(axis=(1, 3))
        assert np.abs(level2 - expected2).mean() < 4
    assert not list(tmp_path.glob(".*.partial"))


def test_micro_batch_quick(slides_dir):
    completed = run_script("bench_micro_batch.py", "--slide", str(slides_dir / SAMPLE_NAME), "--tile-size", "64",
                           "--batch-size", "3")
    assert completed.returncode == 0, completed.stderr
    assert_header(completed.stdout)
    rows = table_rows(completed.stdout, "tiles per forward pass")
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2", "3"]


def test_profile_stages_quick(slides_dir, tmp_path):
    from histo_gedl.models import ModelConfig, ModelMetadata, build_model, save_model

    model = build_model(ModelConfig(kind="regular", group="C4", width=1, depth=2), ModelMetadata(name="tiny"))
    save_model(model, tmp_path / "tiny.safetensors")
    completed = run_script(
        "profile_stages.py", "--", str(slides_dir / SAMPLE_NAME), "--out", str(tmp_path / "out"),
        "--model", str(tmp_path / "tiny.safetensors"), "--tile-size", "256",
    )
    assert completed.returncode == 0, completed.stderr
    assert_header(completed.stdout)
    rows = table_rows(completed.stdout, "s")
    messages = " ".join(rows)
    assert "predicted" in messages
    assert "features to" in messages
    assert rows[-1].startswith("| end |")
    assert (tmp_path / "out" / "cmu-1-small-region" / "summary.json").exists()


def test_profile_stages_needs_infer_arguments():
    completed = run_script("profile_stages.py")
    assert completed.returncode == 2
    assert "after --" in completed.stderr
