"""TFLite sparse constants (SparsityParameters) -> dense arrays, as the DENSIFY op computes them.

Pruned models from the TFLite converter (MediaPipe's "sparse" face detector, for one) store weights as a compressed
tree: one level per dimension in ``traversal_order``, each DENSE (every index 0..dense_size-1) or SPARSE_CSR
(``array_segments`` / ``array_indices`` list the indices present under each parent), with ``block_map`` naming the
original dimensions cut into blocks whose inner dimensions come last. The stored values are the leaves in traversal
order. This walks the tree one level at a time over all paths at once (numpy), so a large weight costs no Python
loop per element.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

DENSE, SPARSE_CSR = 0, 1


def _index_vector(dim, kind: str) -> Optional[np.ndarray]:
    """array_segments / array_indices of a DimensionMetadata: a union of Int32Vector, Uint16Vector, Uint8Vector."""
    import tflite

    union_type = getattr(dim, f"Array{kind}Type")()
    table = getattr(dim, f"Array{kind}")()
    if table is None or union_type == 0:
        return None
    cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}.get(union_type)
    if cls is None:
        raise ValueError(f"unknown index vector type {union_type}")
    vec = cls()
    vec.Init(table.Bytes, table.Pos)
    return vec.ValuesAsNumpy().astype(np.int64) if vec.ValuesLength() else np.zeros(0, np.int64)


def read_sparsity(sparsity) -> Tuple[List[int], List[int], List[Tuple[int, int, Optional[np.ndarray],
                                                                       Optional[np.ndarray]]]]:
    """(traversal_order, block_map, levels) of a tflite SparsityParameters table; a level is (format, dense_size,
    array_segments, array_indices)."""
    order = [int(v) for v in sparsity.TraversalOrderAsNumpy()] if sparsity.TraversalOrderLength() else []
    block_map = [int(v) for v in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    levels = []
    for k in range(sparsity.DimMetadataLength()):
        d = sparsity.DimMetadata(k)
        levels.append((int(d.Format()), int(d.DenseSize()), _index_vector(d, "Segments"), _index_vector(d, "Indices")))
    return order, block_map, levels


def densify(values: np.ndarray, shape: Sequence[int], order: Sequence[int], block_map: Sequence[int],
            levels: Sequence[Tuple[int, int, Optional[np.ndarray], Optional[np.ndarray]]]) -> np.ndarray:
    """The dense array of ``shape`` that a sparse constant stands for (zeros where nothing is stored). Raises
    ValueError when the metadata does not describe ``values`` (a damaged or inconsistent file)."""
    rank = len(shape)
    if not order:
        order = list(range(rank))
    if len(levels) != len(order) or len(order) != rank + len(block_map) or sorted(order) != list(range(len(order))):
        raise ValueError(f"{len(levels)} dimension metadata entries and traversal order {list(order)} do not fit a "
                         f"{rank}-D tensor with {len(block_map)} block dimension(s)")
    parent = np.zeros(1, np.int64)     # per path: the position its next level's segments are read at
    index: List[np.ndarray] = []       # per level: each path's index on that level
    for fmt, size, segments, indices in levels:
        if fmt == DENSE:
            n = parent.size
            parent = (parent[:, None] * size + np.arange(size)[None, :]).reshape(-1)
            index = [np.repeat(a, size) for a in index] + [np.tile(np.arange(size), n)]
        elif fmt == SPARSE_CSR:
            if segments is None or indices is None or parent.size and parent.max() + 1 >= segments.size:
                raise ValueError("a sparse dimension's segments do not cover its parents")
            start, stop = segments[parent], segments[parent + 1]
            counts = stop - start
            if (counts < 0).any() or stop.max(initial=0) > indices.size:
                raise ValueError("a sparse dimension's segments point outside its indices")
            # each path p expands into positions start[p] .. stop[p]-1, in order
            pos = np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            index = [np.repeat(a, counts) for a in index] + [indices[pos]]
            parent = pos
        else:
            raise ValueError(f"unknown dimension format {fmt}")
    values = np.asarray(values).reshape(-1)
    if values.size != parent.size:
        raise ValueError(f"{values.size} stored values for {parent.size} positions in the sparsity metadata")
    coords = [np.zeros(parent.size, np.int64) for _ in range(rank)]
    for level in range(rank):
        coords[order[level]] = index[level]
    for level in range(rank, len(order)):  # block dims: inner index within the block of their original dim
        block = order[level] - rank
        dim = block_map[block]
        coords[dim] = coords[dim] * levels[level][1] + index[level]
    for dim, c in enumerate(coords):
        if c.size and (c.min() < 0 or c.max() >= shape[dim]):
            raise ValueError(f"a stored value falls outside dimension {dim} of shape {list(shape)}")
    dense = np.zeros(tuple(int(s) for s in shape), values.dtype)
    dense[tuple(coords)] = values
    return dense


__all__ = ["densify", "read_sparsity", "DENSE", "SPARSE_CSR"]
