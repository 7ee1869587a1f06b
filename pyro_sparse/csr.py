"""Sparse storage of compact networks: weight tensors whose zeros are most of them go into ``compact.safetensors`` in
compressed sparse row form (issue 29, item 4).

SVD prunes single weights, so a compact SVD network keeps dense tensors full of zeros (a LeNet-300-100 at the
paper's sparsity: ~98% zeros). :func:`pack` stores a floating tensor of 2 or more dims as the CSR form of its 2-D view
``[shape[0], prod(shape[1:])]`` — ``NAME.crow_indices`` (int32 ``[rows + 1]``), ``NAME.col_indices`` (int32
``[nnz]``), ``NAME.values`` (``[nnz]``, the tensor's dtype) — whenever that takes fewer bytes than the dense tensor
(4·(rows + 1) + (4 + itemsize)·nnz < itemsize·numel: for float32, below about half the entries non-zero).
:func:`unpack` checks every part against the description before it writes a single value (files are data: a hostile
file gets a one-line :class:`~pyro_sparse.errors.RunDirError`, never an out-of-range write) and rebuilds the dense
tensors, so the network loaded is the one saved, exactly.
"""

from __future__ import annotations

import math

import torch

from .errors import RunDirError

PARTS = ("crow_indices", "col_indices", "values")


def csr_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t``'s CSR form (int32 indices) — compare with ``t.numel() * t.element_size()``."""
    rows = t.shape[0]
    return 4 * (rows + 1) + (4 + t.element_size()) * int(torch.count_nonzero(t))


def pack(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """``(tensors to write, sparse description)``: every floating tensor of ≥ 2 dims whose CSR form is smaller is
    replaced by its three parts; the description maps its name to ``{"shape": [...], "nnz": int}``."""
    out, sparse = {}, {}
    for name, t in tensors.items():
        if not (t.is_floating_point() and t.dim() >= 2 and t.numel() < 2**31 and t.shape[0] > 0) \
                or csr_bytes(t) >= t.numel() * t.element_size():
            out[name] = t
            continue
        flat = t.reshape(t.shape[0], -1)
        rows, cols = flat.nonzero(as_tuple=True)  # row-major order: rows non-decreasing, cols increasing per row
        counts = torch.bincount(rows, minlength=flat.shape[0])
        out[f"{name}.crow_indices"] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).int()
        out[f"{name}.col_indices"] = cols.int()
        out[f"{name}.values"] = flat[rows, cols].contiguous()
        sparse[name] = {"shape": list(t.shape), "nnz": int(rows.numel())}
    return out, sparse


def check_description(sparse: object) -> bool:
    """Whether ``compact.json``'s ``sparse`` entry is well-formed (types and ranges only)."""
    return isinstance(sparse, dict) and all(
        isinstance(s, dict) and set(s) == {"shape", "nnz"} and isinstance(s["shape"], list)
        and 2 <= len(s["shape"]) <= 8 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in s["shape"])
        and isinstance(s["nnz"], int) and not isinstance(s["nnz"], bool) and 0 <= s["nnz"] <= math.prod(s["shape"])
        for s in sparse.values())


def unpack(tensors: dict[str, torch.Tensor], sparse: dict[str, dict], path: str) -> dict[str, torch.Tensor]:
    """The dense tensors: each sparse entry's three parts checked and turned back into the tensor they describe.

    :raises RunDirError: a part is missing, of the wrong dtype or length, or its indices are out of range, not
        sorted or repeated within a row (``path`` names the file)."""
    out = dict(tensors)
    for name, s in sparse.items():
        parts = {p: out.pop(f"{name}.{p}", None) for p in PARTS}
        if any(v is None for v in parts.values()) or name in out:
            raise RunDirError(f"{path}: the sparse tensor {name!r} needs exactly its parts {', '.join(PARTS)}")
        crow, col, values = parts["crow_indices"], parts["col_indices"], parts["values"]
        shape, nnz = s["shape"], s["nnz"]
        rows, cols = shape[0], math.prod(shape[1:])
        what = None
        if crow.dtype != torch.int32 or col.dtype != torch.int32 or not values.is_floating_point():
            what = "int32 indices and floating values"
        elif crow.shape != (rows + 1,) or col.shape != (nnz,) or values.shape != (nnz,):
            what = f"{rows + 1} row pointers and {nnz} column indices and values"
        else:
            crow, col = crow.long(), col.long()
            steps = crow.diff()
            if int(crow[0]) != 0 or int(crow[-1]) != nnz or bool((steps < 0).any()):
                what = f"row pointers rising from 0 to {nnz}"
            elif nnz and (int(col.min()) < 0 or int(col.max()) >= cols):
                what = f"column indices in [0, {cols})"
            else:
                row = torch.repeat_interleave(torch.arange(rows), steps)
                key = row * cols + col
                if nnz > 1 and not bool((key.diff() > 0).all()):
                    what = "column indices increasing within each row"
        if what is not None:
            raise RunDirError(f"{path}: the sparse tensor {name!r} is malformed; expected {what}")
        dense = torch.zeros(rows * cols, dtype=values.dtype)
        dense[key] = values
        out[name] = dense.view(shape)
    return out
