"""Helpers shared by the benchmark scripts in this folder.

The scripts import this module by name, which works because Python puts a
script's own folder first on ``sys.path``. It contains the options every script
takes (``--quick``, ``--device``, ``--threads``), the header that records
date, versions and hardware, markdown tables, worker subprocesses with their
peak resident memory, a writer of tiled pyramidal TIFF slides, and the
untrained stand-in model used until a trained one is shipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SLIDE = REPO_ROOT / "data" / "sample" / "cmu-1-small-region.svs"
#: Model used when it is shipped; until then the scripts build an untrained stand-in.
SHIPPED_MODEL = "nuclei-c8-v1"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--quick``, ``--device`` and ``--threads`` to ``parser``."""
    parser.add_argument(
        "--quick", action="store_true",
        help="small sizes and few repeats, to check that the script works; the figures mean little",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="torch device for the model (default cpu); cuda needs a CUDA build of torch and a GPU",
    )
    parser.add_argument(
        "--threads", type=int, default=1, metavar="N",
        help="torch intra-op threads, and OMP_NUM_THREADS of worker processes (default 1)",
    )


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error when ``--threads`` or ``--device`` cannot be used."""
    import torch

    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda requested but CUDA is not available in this torch build ({torch.__version__}); "
            "use --device cpu or install a CUDA build of torch"
        )


def configure_torch(threads: int) -> None:
    """Set torch's intra-op thread count."""
    import torch

    torch.set_num_threads(threads)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a clock read afterwards includes it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo (what ``lscpu`` shows as "Model name")."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment_header(title: str, args: argparse.Namespace) -> str:
    """Return markdown lines naming the script, date, versions, hardware and settings of this run."""
    import torch

    from histo_gedl import __version__

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines = [
        f"## {title}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `python {shlex.join(sys.argv)}`",
        f"- versions: histo_gedl {__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"monai {_package_version('monai')}, escnn {_package_version('escnn')}, "
        f"zarr {_package_version('zarr')}, tifffile {_package_version('tifffile')}, "
        f"python {platform.python_version()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; "
        f"load average {load[0]:.2f} at start (above 0 means other work shared the machine)",
        f"- device: {args.device}, torch threads: {args.threads}, quick mode: {'yes' if args.quick else 'no'}",
    ]
    if args.device == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines) + "\n"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format ``rows`` under ``headers`` as a markdown table; floats get 3 significant digits."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            if value != value:  # NaN marks a figure that does not apply.
                return "-"
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(value: float, baseline: float) -> float:
    """Return ``value / baseline``, or NaN when the baseline is not above 0."""
    return value / baseline if baseline > 0 else float("nan")


def worker_environment(threads: int) -> dict[str, str]:
    """Return this process's environment with the thread count set for OpenMP and MKL."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_measured(command: Sequence[str], threads: int, timeout: float | None = None) -> tuple[int, float, int, str]:
    """Run ``command`` in a new process; return (exit status, wall seconds, peak RSS bytes, output).

    The peak resident set size comes from ``os.wait4`` for that one child,
    so earlier runs and other children do not mix into it. Linux reports
    ``ru_maxrss`` in KiB. Standard output and error are merged into the
    returned text.

    Raises:
        subprocess.TimeoutExpired: the command ran longer than ``timeout`` seconds; it is killed first.
    """
    with tempfile.TemporaryFile() as output:
        began = time.perf_counter()
        process = subprocess.Popen(
            list(command), stdout=output, stderr=subprocess.STDOUT, env=worker_environment(threads)
        )
        deadline = None if timeout is None else began + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                raise subprocess.TimeoutExpired(list(command), timeout)
            time.sleep(0.05)
        wall = time.perf_counter() - began
        # Popen must not wait for a process that os.wait4 has already reaped.
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode(errors="replace")
    return process.returncode, wall, usage.ru_maxrss * 1024, text


def run_worker(script: Path, worker_args: Sequence[str], threads: int) -> tuple[dict, int]:
    """Run ``script --worker ...`` in a fresh interpreter; return (its JSON result, peak RSS bytes).

    The worker writes its result to the file named by ``--result``.

    Raises:
        RuntimeError: the worker exited with an error; the message contains the end of its output.
    """
    with tempfile.TemporaryDirectory(prefix="histo-gedl-bench-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, str(script), "--worker", *worker_args, "--result", str(result_path)]
        status, _, peak, output = run_measured(command, threads)
        if status != 0 or not result_path.exists():
            raise RuntimeError(
                f"benchmark worker failed with exit status {status}: {shlex.join(command)}\n{output[-3000:]}"
            )
        return json.loads(result_path.read_text()), peak


def write_json_atomically(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to a temporary name beside ``path``, then rename it to ``path``."""
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def gib(size_bytes: float) -> float:
    """Return ``size_bytes`` in GiB."""
    return size_bytes / 2**30


# Stand-in models.


def prepare_model(model: str | None, folder: Path, width: int = 3, depth: int = 3) -> tuple[Path, str]:
    """Return (model file, label) for the ``--model`` option of a script.

    ``None`` means the shipped model when it exists, else an untrained
    regular C8 U-Net of ``width`` and ``depth`` written to ``folder``. The
    label names which, so that a table never passes off random weights as a
    trained model.
    """
    from histo_gedl.errors import ModelFileError
    from histo_gedl.models import ModelConfig, ModelMetadata, build_model, count_parameters, resolve_model_path, save_model

    if model is not None and model != "untrained":
        path = resolve_model_path(model)
        return path, f"{path.name}"
    if model is None:
        try:
            path = resolve_model_path(SHIPPED_MODEL)
            return path, f"{path.name} (shipped)"
        except ModelFileError:
            pass
    import torch

    torch.manual_seed(0)
    config = ModelConfig(kind="regular", group="C8", width=width, depth=depth)
    network = build_model(config, ModelMetadata(name=f"untrained-c8-w{width}-d{depth}", mpp=0.5))
    path = save_model(network.eval(), folder / f"untrained-c8-w{width}-d{depth}.safetensors")
    label = f"untrained C8 regular, width {width}, depth {depth}, {count_parameters(network)} parameters (random weights)"
    return path, label


# Synthetic pyramidal slides.


def pyramid_sizes(width: int, height: int, smallest: int = 1024) -> list[tuple[int, int]]:
    """Return (width, height) of each level, halving until the longer side is at most ``smallest``."""
    sizes = [(width, height)]
    while max(sizes[-1]) > smallest:
        level_width, level_height = sizes[-1]
        sizes.append((max(1, level_width // 2), max(1, level_height // 2)))
    return sizes


def _tiles(read: Callable[[int, int, int, int], np.ndarray], width: int, height: int, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            yield read(x, y, tile, tile)


def write_pyramidal_tiff(
    path: Path,
    width: int,
    height: int,
    read_level: Callable[[int, int, int, int, int], np.ndarray],
    levels: int,
    mpp: float,
    tile: int = 256,
    compression: str = "jpeg",
) -> Path:
    """Write a tiled pyramidal TIFF of the kind OpenSlide reads as "generic tiled TIFF"; return ``path``.

    Level 0 is the first page; each further level is a reduced-resolution
    page (``subfiletype`` 1) of half the size of the one before. Pages are
    written tile by tile from ``read_level``, so the image is never whole in
    memory. The resolution tags hold ``mpp`` in pixels per centimetre. The
    file is written under a temporary name and renamed when complete.

    Args:
        path: output file.
        width, height: size of level 0 in pixels.
        read_level: ``read_level(level, x, y, w, h)`` returns uint8 RGB (h, w, 3)
            for that rectangle of the level, in the level's pixels. Pixels
            past the level's edge may have any value.
        levels: number of levels to write (see :func:`pyramid_sizes`).
        mpp: micrometres per pixel of level 0.
        tile: tile width and height in pixels, a multiple of 16.
        compression: ``"jpeg"`` (quality 90, RGB, no chroma subsampling) or ``"zlib"``.
    """
    import tifffile

    if compression == "jpeg":
        codec = {"compression": "jpeg", "compressionargs": {"level": 90}}
    elif compression == "zlib":
        codec = {"compression": "zlib"}
    else:
        raise ValueError(f"compression must be 'jpeg' or 'zlib', got {compression!r}")
    temporary = path.with_name(f".{path.name}.partial")
    with tifffile.TiffWriter(temporary, bigtiff=True) as tiff:
        for level in range(levels):
            level_width, level_height = width >> level, height >> level
            pixels_per_cm = 1e4 / (mpp * 2**level)
            tiles = _tiles(
                lambda x, y, w, h, level=level: read_level(level, x, y, w, h), level_width, level_height, tile
            )
            tiff.write(
                tiles, shape=(level_height, level_width, 3), dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", subfiletype=0 if level == 0 else 1,
                resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER",
                metadata=None, **codec,
            )
    os.replace(temporary, path)
    return path


class RepeatedTissue:
    """An endless slide made by mirroring a real image in both directions, with its own pyramid.

    The image is cropped to a multiple of ``2 ** (levels - 1)`` and mirrored
    at its edges, so the pattern has no seams. Level ``k`` repeats the
    image's 2x2-mean pyramid step ``k``, which equals a 2x2 mean of level
    ``k - 1`` because the crop is divisible.

    Args:
        image: uint8 RGB (h, w, 3) of real tissue.
        levels: number of pyramid levels to provide.
    """

    def __init__(self, image: np.ndarray, levels: int) -> None:
        multiple = 2 ** (levels - 1)
        height = image.shape[0] // multiple * multiple
        width = image.shape[1] // multiple * multiple
        if height == 0 or width == 0:
            raise ValueError(f"image {image.shape[:2]} is smaller than {multiple} px, the coarsest level's step")
        self.levels = [np.ascontiguousarray(image[:height, :width])]
        for _ in range(1, levels):
            previous = self.levels[-1].astype(np.uint16)
            mean = (previous[0::2, 0::2] + previous[1::2, 0::2] + previous[0::2, 1::2] + previous[1::2, 1::2] + 2) // 4
            self.levels.append(mean.astype(np.uint8))

    @staticmethod
    def _mirror(start: int, count: int, period: int) -> np.ndarray:
        index = np.arange(start, start + count) % (2 * period)
        return np.where(index < period, index, 2 * period - 1 - index)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Return uint8 RGB (height, width, 3) at (x, y) of ``level``, in that level's pixels."""
        pattern = self.levels[level]
        rows = self._mirror(y, height, pattern.shape[0])
        cols = self._mirror(x, width, pattern.shape[1])
        return pattern[rows[:, None], cols[None, :]]
