"""Shared test set-up: one torch thread per test process.

The test machines have 2 cores; OpenMP threads of several processes spinning against each other slow
everything down many times, so tests stay single-threaded.
"""

import torch

torch.set_num_threads(1)
