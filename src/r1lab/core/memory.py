"""Keeping a training step's resident memory down to what the current phase uses.

Peak RSS decides whether a run fits a machine, and a GRPO step has phases that need different
things: generation, the reference pass, the policy's forward/backward, the optimizer. Two
things hold memory that the phase at hand does not need:

- the C allocator keeps freed blocks for reuse instead of returning them, so the garbage of
  one phase (a generation KV cache, last micro-batch's activations) stays resident into the
  next; `release_free_memory` hands it back at phase boundaries. That is a trade: each 4 KB
  page handed back is a page fault when the next phase touches it again (~2.5 us on this VM),
  and an fp32 micro-batch of 16 completions allocates ~4 GB of temporaries, so returning them
  costs ~3 s per micro-batch. `configure_allocator` picks one policy per training process:
  release at every phase boundary (lean memory), or keep and reuse (speed);
- the frozen reference model is read once per step (its log-probs) and idle for the rest;
  `DiskBackedWeights` keeps its parameters in a file mapped into memory and drops their pages
  after each use: they come back from the page cache on the next pass, and since they are
  clean file pages the kernel can evict them without writing anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

_MADV_DONTNEED = 4  # linux/mman.h; the same value on every Linux architecture


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


_LIBC = _libc()

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_release_between_phases = False


def configure_allocator(release: bool) -> bool:
    """Choose how freed memory is treated for the rest of this process; False where glibc's
    allocator is not there to configure.

    `release=True`: `between_phases` returns free pages to the OS (lowest peak RSS).
    `release=False`: blocks up to 32 MB come from the heap and the heap is never trimmed, so
    the activations and logit chunks of one micro-batch are reused, already faulted in, by the
    next (glibc would otherwise map and unmap each block over its adaptive threshold: one
    fp32 micro-batch 16.1 -> 15.2 s, 141k -> 4k page faults). glibc has no way back to its
    adaptive thresholds once they are set, so a later `release=True` in the same process
    keeps them and only adds the trimming.
    """
    global _release_between_phases
    _release_between_phases = release
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:
        return False
    if not release:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    return True


def between_phases() -> None:
    """A phase of the step is over: release its free memory if the process was configured to."""
    if _release_between_phases:
        release_free_memory()


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS; False where that is not possible.

    glibc's malloc keeps freed memory in its arenas, and the blocks a tensor library frees
    between phases are mostly below the size it maps and unmaps directly, so without this
    they would stay resident. The call itself is cheap (a walk over the free lists); the cost
    is the page faults when the memory is needed again, which is why a training run does it
    only under the release policy (`configure_allocator`, `between_phases`).
    """
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


class DiskBackedWeights:
    """A frozen module whose parameters live in a memory-mapped file under `directory`.

    The parameters become views into one shared mapping of the file, so the module runs as
    before, and writes to them (`load_state_dict`, e.g. a reference reset) land in the file.
    `release()` drops the mapping's resident pages; the next use pages them back in. The
    file is unlinked as soon as it is mapped, so nothing is left behind however the run ends.
    `directory` must be on a disk: on a tmpfs the pages would be RAM under another name.
    """

    def __init__(self, module: nn.Module, directory: str | Path) -> None:
        if not supported():
            raise RuntimeError("disk-backed weights need Linux (mmap, madvise, /proc)")
        params = list(module.parameters())  # a tied weight is one Parameter, listed once
        if any(p.requires_grad for p in params):
            raise ValueError("DiskBackedWeights holds frozen modules only (requires_grad=False)")
        if any(p.device.type != "cpu" for p in params):
            raise ValueError("DiskBackedWeights maps weights into CPU memory: move the module")
        offsets, size = [], 0
        for p in params:
            size = -(-size // 64) * 64  # 64-byte aligned views for every dtype
            offsets.append(size)
            size += p.numel() * p.element_size()
        Path(directory).mkdir(parents=True, exist_ok=True)
        handle, path = tempfile.mkstemp(prefix=".weights-", suffix=".bin", dir=directory)
        try:
            self._bytes = torch.from_file(path, shared=True, size=max(size, 1), dtype=torch.uint8)
        finally:
            Path(path).unlink()
            os.close(handle)
        for p, offset in zip(params, offsets, strict=True):
            view = self._bytes[offset : offset + p.numel() * p.element_size()]
            view = view.view(p.dtype).view(p.shape)
            with torch.no_grad():
                view.copy_(p.data)
            p.data = view
        self.nbytes = size

    def release(self) -> bool:
        """Drop the resident pages of the weights (their contents stay in the file)."""
        if _LIBC is None:
            return False
        length = -(-self.nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        address = ctypes.c_void_p(self._bytes.data_ptr())
        return _LIBC.madvise(address, ctypes.c_size_t(length), _MADV_DONTNEED) == 0

    def resident_bytes(self) -> int:
        """Bytes of the mapping now in this process's memory (from /proc/self/smaps)."""
        start = self._bytes.data_ptr()
        with open("/proc/self/smaps") as smaps:
            inside = False
            for line in smaps:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    inside = int(head.split("-")[0], 16) == start
                elif inside and head == "Rss:":
                    return int(line.split()[1]) * 1024
        return 0


def supported() -> bool:
    """Whether this platform can map weights to a file and drop their pages (Linux)."""
    return sys.platform.startswith("linux") and _LIBC is not None
