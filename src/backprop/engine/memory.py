"""Keep a training step's arrays in memory the process already has, instead of fresh pages every step.

A training step allocates and frees arrays of 0.1-10 MB (activations, im2col columns, gradients). glibc's
malloc maps every block above its mmap threshold (initially 128 KiB) freshly from the kernel and unmaps it on
free, so each step pays a page fault per few pages it touches: about 3,400 faults per LeNet-5 step at batch
128, measured to cost a third of the step (7,700 -> 12,000 samples/s without them). glibc raises that
threshold by itself to the size of any freed mmapped block of up to 32 MiB (the dynamic mmap threshold, see
mallopt(3)); allocating and freeing one such block triggers that rule once, when training starts, instead of
by chance. Afterwards blocks below 32 MiB come from the heap and are reused, and up to 64 MiB of freed heap
stays with the process (the trim threshold doubles with it).

NOTE: this changes the whole process's malloc behaviour (that is the point), so it is not done by importing
backprop, only by calling :func:`tune_malloc`, which the training loop does when training starts (any
number of times: it acts once per process). Nothing happens on other C libraries, where the user fixed the
threshold (MALLOC_MMAP_THRESHOLD_ disables the dynamic rule), or with BACKPROP_MALLOC_TUNING=0.

>>> first = tune_malloc()
>>> tune_malloc() == first              # idempotent: the second call changes nothing
True
"""

from __future__ import annotations

import os

import numpy as np

_tuned = False


def tune_malloc() -> bool:
    """Apply the tuning once per process; True if it was applied (now or before)."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("BACKPROP_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):  # not glibc (or no confstr at all)
        libc = ""
    if not libc.startswith("glibc"):
        return False
    block = np.empty((1 << 25) - (1 << 13), dtype=np.uint8)  # just under glibc's 32 MiB ceiling; not touched
    del block
    _tuned = True
    return True
