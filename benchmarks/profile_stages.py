"""Profile the resident memory of ``histo-gedl infer`` stage by stage.

Runs ``histo-gedl infer`` in this process with debug logging. A thread
samples the process's resident memory (VmRSS, and RssAnon, its anonymous part:
heap and other memory that is not a mapped file) every 10 ms. Each log line of the
pipeline ends a stage: the table lists, per line, the largest sample since
the previous line and the memory at that moment. Peaks of one stage vary by
tens of MB between runs with the state of the heap, so compare runs of the
same slide, or of two slides in one session. Run from the repository root:

    python benchmarks/profile_stages.py [--threads N] -- SLIDE --out DIR [infer options]

For example ``python benchmarks/profile_stages.py -- data/sample/cmu-1-small-region.svs
--out /tmp/profile --overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from _bench_common import check_common_arguments, environment_header, markdown_table

#: Seconds between two samples of resident memory.
SAMPLE_SECONDS = 0.01
#: Loggers that describe the pipeline's stages.
STAGE_LOGGERS = ("histo_gedl",)


def _status_mib() -> tuple[float, float]:
    """Return (VmRSS, RssAnon) of this process in MiB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("RssAnon", float("nan"))


class _Sampler:
    """Background sampler of the largest VmRSS and RssAnon since the last :meth:`take`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peak = (0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, anonymous = _status_mib()
            with self._lock:
                self._peak = (max(self._peak[0], rss), max(self._peak[1], anonymous))
            time.sleep(SAMPLE_SECONDS)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def take(self) -> tuple[float, float]:
        """Return the peaks since the previous call and start new ones from the current values."""
        current = _status_mib()
        with self._lock:
            peak = (max(self._peak[0], current[0]), max(self._peak[1], current[1]))
            self._peak = current
        return peak


class _StageHandler(logging.Handler):
    """Log handler that adds a table row per pipeline log line: time, peaks since the line before, message."""

    def __init__(self, sampler: _Sampler, started: float) -> None:
        super().__init__(level=logging.DEBUG)
        self.sampler = sampler
        self.started = started
        self.rows: list[list] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(STAGE_LOGGERS):
            return
        peak_rss, peak_anonymous = self.sampler.take()
        rss, anonymous = _status_mib()
        message = record.getMessage()
        if len(message) > 90:
            message = message[:87] + "..."
        self.rows.append([
            f"{time.perf_counter() - self.started:.1f}", record.name.removeprefix("histo_gedl."),
            f"{peak_rss:.0f}", f"{peak_anonymous:.0f}", f"{rss:.0f}", message.replace("|", "/"),
        ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        description="Profile the resident memory of one histo-gedl infer run, with a table of peaks per log line.",
        usage="%(prog)s [--threads N] [--device {cpu,cuda}] -- SLIDE --out DIR [infer options]",
        epilog="Columns: s, seconds since the start; peak RSS and peak RssAnon, the largest resident memory "
        "(RssAnon: its anonymous part, without mapped files) since the row before, in MiB; RSS at line, the "
        "memory when the log line was written; log line, the message that ends the row.",
    )
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default cpu)")
    # Accepted like in the other benchmark scripts, which the smoke tests call with it; it changes nothing here.
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv[:split])
    check_common_arguments(parser, args)
    infer_arguments = argv[split + 1 :]
    if not infer_arguments:
        parser.error("give the arguments of histo-gedl infer after --, at least SLIDE --out DIR")

    import torch

    from histo_gedl.cli import main as cli_main

    torch.set_num_threads(args.threads)
    sampler = _Sampler()
    handler = _StageHandler(sampler, time.perf_counter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("PIL", "matplotlib", "tifffile", "numcodecs", "zarr", "asyncio", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sampler.start()
    try:
        status = cli_main(["infer", *infer_arguments, "--device", args.device])
    finally:
        sampler.stop()
        root.removeHandler(handler)
    end_peak = sampler.take()
    if status == 2:
        # infer rejected its arguments before doing any work: there is nothing to profile.
        return status

    print(environment_header("Resident memory of histo-gedl infer by stage", args))
    print(f"- infer arguments: `{' '.join(infer_arguments)}`; exit status {status}")
    print("- MiB; a row's peaks are the largest samples since the row before it; "
          "RssAnon leaves out pages of shared libraries\n")
    rows = handler.rows + [["end", "-", f"{end_peak[0]:.0f}", f"{end_peak[1]:.0f}", "-", "after the last log line"]]
    print(markdown_table(["s", "logger", "peak RSS", "peak RssAnon", "RSS at line", "log line"], rows))
    return status


if __name__ == "__main__":
    sys.exit(main())
