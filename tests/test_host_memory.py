"""`keep_freed_host_memory` stops the page faults of per-step buffers that are allocated and freed."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
from jaxcnn.runtime.host_memory import keep_freed_host_memory

def faults_of_steps():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):  # a step's buffers: three 12 MB blocks and one of 48 MB, written, then freed
        buffers = [np.ones(n, np.float32) for n in (3 * 2**20, 3 * 2**20, 3 * 2**20, 12 * 2**20)]
        del buffers
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_steps()
assert keep_freed_host_memory()
faults_of_steps()  # the first pass grows the heap once
print(default, faults_of_steps())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_kept_memory_stops_page_faults_of_repeated_step_buffers():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    default, kept = map(int, out.split())
    assert default > 20 * 50  # glibc's default: the buffers' pages are faulted in again every step
    assert kept * 20 < default
