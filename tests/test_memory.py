"""Returning freed heap memory to the system."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from histo_gedl._memory import release_free_memory


def _resident_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line in /proc/self/status")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_release_returns_fragmented_heap_memory():
    # Many small blocks live on glibc's heap. Freeing all but every 50th leaves
    # holes that the heap keeps until it is trimmed.
    blocks = [np.ones(8192, np.uint8) for _ in range(40000)]
    survivors = blocks[::50]
    del blocks
    before = _resident_kib()
    assert release_free_memory() is True
    after = _resident_kib()
    assert before - after > 100 * 1024  # at least 100 MiB of the 320 MiB freed went back
    assert all(block[0] == 1 for block in survivors)


_FRAGMENT_HEAP = """
import sys
import numpy as np
from histo_gedl._memory import limit_retained_memory

def resident_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

if sys.argv[1] == "limit":
    assert limit_retained_memory(mmap_threshold=1 << 20)
# Freeing one large mapped block raises glibc's default mmap threshold above 2 MiB.
np.ones(4 << 20, np.uint8)
# 2 MiB arrays, each followed by a small survivor that pins the heap behind it.
big, small = [], []
for _ in range(60):
    big.append(np.ones(2 << 20, np.uint8))
    small.append(np.ones(1 << 10, np.uint8))
before = resident_kib()
del big
print(before - resident_kib())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_fixed_mmap_threshold_returns_large_blocks_without_trim():
    """With a 1 MiB threshold, 120 MiB of 2 MiB arrays go back to the system when freed; by default they stay."""
    import subprocess
    import sys

    def freed_kib(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", _FRAGMENT_HEAP, mode], capture_output=True, text=True, check=True)
        return int(result.stdout)

    assert freed_kib("limit") > 100 * 1024
    assert freed_kib("default") < 20 * 1024


_READ_WHOLE_SLIDE = """
import sys
from histo_gedl._memory import release_free_memory
from histo_gedl.slides import backends, open_slide

def resident_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

if sys.argv[2] == "default-cache":
    backends.OPENSLIDE_CACHE_BYTES = None  # OpenSlide's own cache
with open_slide(sys.argv[1]) as slide:
    assert slide.backend == "openslide", slide.backend
    width, height = slide.dimensions
    slide.read_region((0, 0), (256, 256), slide.require_mpp())
    release_free_memory()
    before = resident_kib()
    for row in range(0, height, 512):
        for col in range(0, width, 512):
            slide.read_region((col, row), (512, 512), slide.require_mpp())
    release_free_memory()
    print(resident_kib() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_openslide_cache_is_small(slides_dir):
    """Reading all of the sample (26 MB decoded) keeps about 8 MiB of it; OpenSlide's own cache keeps all."""
    import subprocess
    import sys

    slide = str(slides_dir / "cmu-1-small-region.svs")

    def growth_kib(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", _READ_WHOLE_SLIDE, slide, mode],
                                capture_output=True, text=True, check=True)
        return int(result.stdout)

    assert growth_kib("ours") < 12 * 1024
    assert growth_kib("default-cache") > 20 * 1024


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_arena_cap_is_accepted():
    import subprocess
    import sys

    code = "from histo_gedl._memory import limit_retained_memory; print(limit_retained_memory())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
