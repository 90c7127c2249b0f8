"""Grid symmetries shared by the grid datasets (Maze, ARC): the 8 dihedral transforms.

Transform ids follow the reference (``dataset/common.py``): 0 identity, 1-3 rotations by
90/180/270 degrees (``np.rot90`` direction), 4 left-right flip, 5 up-down flip,
6 transpose, 7 anti-transpose. ``DIHEDRAL_INVERSE[t]`` undoes ``t``.
"""
from __future__ import annotations

import numpy as np

NUM_DIHEDRAL = 8
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """Apply dihedral transform ``tid`` to a 2-D ``grid`` [H, W]; returns [H, W] or [W, H]."""
    if tid == 0:
        return grid
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid)
    if tid == 4:
        return np.fliplr(grid)
    if tid == 5:
        return np.flipud(grid)
    if tid == 6:
        return grid.T
    if tid == 7:
        return np.fliplr(np.rot90(grid, k=1))
    raise ValueError(f"dihedral transform id must be in 0..7, got {tid}")


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """Undo ``dihedral_transform(., tid)``."""
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])
