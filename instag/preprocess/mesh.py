"""MediaPipe face-mesh topology: named landmark sets, closed polygons, triangles, 68-point map.

Landmark indices refer to the 478-point mesh (468 face points + 10 iris points). The
polygons and triangles are built from MediaPipe's own connection sets, imported lazily.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_LANDMARKS = 478

# The 68-point (iBUG / face_alignment) layout as 478-mesh indices, built from the mesh's
# anatomy: jaw 0-16, brows 17-26, nose bridge 27-30, nostrils 31-35, eyes 36-47, outer lips
# 48-59, inner lips 60-67. Image-left side first, as in the 68-point convention.
MESH_TO_68 = np.array([
    234, 93, 132, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 361, 323, 454,  # jaw
    70, 63, 105, 66, 107,  # image-left brow, outer to inner
    336, 296, 334, 293, 300,  # image-right brow, inner to outer
    168, 197, 5, 4,  # nose bridge, top to tip
    98, 97, 2, 326, 327,  # nostrils, left to right
    33, 160, 158, 133, 153, 144,  # image-left eye from the outer corner, clockwise
    362, 385, 387, 263, 373, 380,  # image-right eye from the inner corner, clockwise
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips from the left corner
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips from the left corner
], dtype=np.int64)

# Closed rings, in order around the ring.
INNER_LIPS = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95])
OUTER_LIPS = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146])
LEFT_EYE_RING = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7])  # image left
RIGHT_EYE_RING = np.array([362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382])

# Points that move little with expression: used to weight rigid fitting.
STABLE_POINTS = np.array([
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 2, 98, 327,  # forehead and nose
    33, 133, 362, 263, 130, 359, 243, 463,  # eye corners
    234, 454, 127, 356, 93, 323, 21, 251, 54, 284, 103, 332, 67, 297, 109, 338,  # face sides, upper forehead
])

LIP_TOP, LIP_BOTTOM = 13, 14  # inner-lip midpoints (mouth opening)
EYE_OUTER_LEFT, EYE_OUTER_RIGHT = 33, 263  # outer eye corners (inter-ocular distance)
CHIN, FOREHEAD = 152, 10
CHEEK_LEFT, CHEEK_RIGHT = 234, 454


def _ordered_ring(edges: set[tuple[int, int]]) -> np.ndarray:
    """Order the vertices of a closed edge loop."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    start = min(adj)
    ring, prev, cur = [start], None, start
    while True:
        nxt = [n for n in adj[cur] if n != prev]
        if not nxt or nxt[0] == start:
            break
        prev, cur = cur, nxt[0]
        ring.append(cur)
    return np.asarray(ring, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def face_oval() -> np.ndarray:
    """Indices of the face outline, in order around it."""
    from mediapipe.python.solutions import face_mesh

    return _ordered_ring({tuple(e) for e in face_mesh.FACEMESH_FACE_OVAL})


@functools.lru_cache(maxsize=1)
def lip_points() -> np.ndarray:
    """The 40 landmark indices of MediaPipe's FACEMESH_LIPS connections (sorted)."""
    from mediapipe.python.solutions import face_mesh

    return np.asarray(sorted({i for e in face_mesh.FACEMESH_LIPS for i in e}), dtype=np.int64)


@functools.lru_cache(maxsize=1)
def tessellation_edges() -> np.ndarray:
    """Undirected edges of the face tessellation, int64 [E,2]."""
    from mediapipe.python.solutions import face_mesh

    return np.asarray(sorted({tuple(sorted(e)) for e in face_mesh.FACEMESH_TESSELATION}), dtype=np.int64)


@functools.lru_cache(maxsize=1)
def triangles() -> np.ndarray:
    """Triangles of the 468-point face mesh, int64 [F,3], unoriented.

    MediaPipe ships only the edge list; its triangles are the 3-cliques of that graph,
    minus the few cliques whose three edges each already bound two true faces.
    """
    edges = tessellation_edges()
    adj: dict[int, set[int]] = {}
    for a, b in edges:
        adj.setdefault(int(a), set()).add(int(b))
        adj.setdefault(int(b), set()).add(int(a))
    tris = set()
    for a, b in edges:
        for c in adj[int(a)] & adj[int(b)]:
            tris.add(tuple(sorted((int(a), int(b), c))))
    uses: dict[tuple[int, int], int] = {}
    for t in tris:
        for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])):
            uses[e] = uses.get(e, 0) + 1
    faces = [t for t in tris if not all(uses[e] > 2 for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))]
    return np.asarray(sorted(faces), dtype=np.int64)
