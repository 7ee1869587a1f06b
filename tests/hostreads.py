"""Count host reads: tensor-to-Python conversions, each a host-device synchronisation for a GPU tensor.

Test tooling (not part of the library): used by ``tests/infer/test_engine_switches.py`` and ``benchmarks/syncs.py``.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable

import torch

#: the ``torch.Tensor`` methods that hand a value to Python
CONVERSIONS = ("__float__", "__int__", "__bool__", "__index__", "item", "tolist", "numpy")
#: key under which conversions made inside ``torch.optim`` are counted: Adam keeps its step counter on the host
#: (``capturable=False``), so reading it synchronises nothing
OPTIMIZER = "torch.optim (host step counter)"


def count_host_reads(fn: Callable[[], object]) -> Counter:
    """Run ``fn()`` and count the tensor-to-Python conversions it makes: ``{"other": k, OPTIMIZER: m}``.

    Patches the methods in :data:`CONVERSIONS` of ``torch.Tensor`` for the duration of the call (not thread-safe;
    for tests and benchmarks).
    """
    seen: Counter = Counter()
    original = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def counted(name):
        def conversion(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0].filename
            seen[OPTIMIZER if "/torch/optim/" in caller else "other"] += 1
            return original[name](self, *args, **kwargs)

        return conversion

    for name in CONVERSIONS:
        setattr(torch.Tensor, name, counted(name))
    try:
        fn()
    finally:
        for name, method in original.items():
            setattr(torch.Tensor, name, method)
    return seen
