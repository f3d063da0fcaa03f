"""Geometry helpers of the phantom: smooth steps, partial-volume tube rasteriser, branching trees."""

from __future__ import annotations

import numpy as np

__all__ = ["smoothstep", "Raster", "grow_tree"]


def smoothstep(a: float, b: float, x):
    t = np.clip((np.asarray(x, dtype=np.float64) - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class Raster:
    """Rasterises tapered capsules (tubes) onto the voxel grid with partial volume."""

    def __init__(self, shape, spacing, origin_mm):
        self.shape = shape
        self.dz, self.dy, self.dx = spacing
        self.z0, self.y0, self.x0 = origin_mm  # mm coordinate of voxel (0, 0, 0)

    def capsule(self, target, p0, p1, r0, r1, *, margin=0.0, binary=False, weight_z=True):
        """Max-accumulate the occupancy of the capsule p0-p1 into ``target`` (float32 or bool)."""
        p0 = np.asarray(p0, dtype=np.float64)
        p1 = np.asarray(p1, dtype=np.float64)
        r0 = float(r0) + margin
        r1 = float(r1) + margin
        rmax = max(r0, r1)
        lo = np.minimum(p0, p1) - rmax
        hi = np.maximum(p0, p1) + rmax
        pad = np.array([self.dz / 2, self.dx, self.dx])
        ilo = np.floor(
            (lo - pad - [self.z0, self.y0, self.x0]) / [self.dz, self.dy, self.dx]
        ).astype(int)
        ihi = (
            np.ceil((hi + pad - [self.z0, self.y0, self.x0]) / [self.dz, self.dy, self.dx]).astype(
                int
            )
            + 1
        )
        ilo = np.maximum(ilo, 0)
        ihi = np.minimum(ihi, self.shape)
        if np.any(ihi <= ilo):
            return
        zz = (self.z0 + self.dz * np.arange(ilo[0], ihi[0]))[:, None, None]
        yy = (self.y0 + self.dy * np.arange(ilo[1], ihi[1]))[None, :, None]
        xx = (self.x0 + self.dx * np.arange(ilo[2], ihi[2]))[None, None, :]
        v = p1 - p0
        L2 = float(v @ v)
        if L2 > 1e-12:
            t = ((zz - p0[0]) * v[0] + (yy - p0[1]) * v[1] + (xx - p0[2]) * v[2]) / L2
            t = np.clip(t, 0.0, 1.0)
        else:
            t = np.zeros((1, 1, 1))
        cz = zz - (p0[0] + t * v[0])
        cy = yy - (p0[1] + t * v[1])
        cx = xx - (p0[2] + t * v[2])
        cz = np.maximum(np.abs(cz) - self.dz / 2, 0.0)  # slab: anywhere in the slice's thickness
        d = np.sqrt(cz * cz + cy * cy + cx * cx)
        r = r0 + t * (r1 - r0)
        sl = (slice(ilo[0], ihi[0]), slice(ilo[1], ihi[1]), slice(ilo[2], ihi[2]))
        if binary:
            target[sl] |= d <= r
            return
        occ = np.clip((r - d) / self.dx + 0.5, 0.0, 1.0)
        if weight_z:
            # Thin tubes lying in the slice plane fill only part of the slab.
            uz = abs(v[0]) / np.sqrt(L2) if L2 > 1e-12 else 1.0
            sin_a = np.sqrt(max(1.0 - uz * uz, 1e-6))
            occ = occ * np.minimum(1.0, 2.0 * r / (self.dz * sin_a))
        np.maximum(target[sl], occ.astype(np.float32), out=target[sl])

    def polyline(self, target, pts, radii, **kw):
        for i in range(len(pts) - 1):
            self.capsule(target, pts[i], pts[i + 1], radii[i], radii[i + 1], **kw)


def grow_tree(rng, root, pts, r_root, *, first_frac=0.35, frac=0.5, r_min=0.0):
    """Volume-filling branching tree (Tawhai/Kitaoka style).

    Each branch supplies a set of target points; it grows a fraction of the way
    towards their centroid, then splits them by the plane through the centroid
    normal to their principal axis.  Radii follow Murray's law with flow
    proportional to the number of points supplied.

    Returns an array of segments ``(z0, y0, x0, z1, y1, x1, r, generation)``.
    """
    segs: list[tuple] = []
    stack = [(np.asarray(root, dtype=np.float64), pts, r_root, 0)]
    n_total = len(pts)
    while stack:
        p, s, r, gen = stack.pop()
        n = len(s)
        if n == 0:
            continue
        if n == 1 or r < r_min:
            end = s.mean(axis=0)
            segs.append((*p, *end, r, gen))
            continue
        c = s.mean(axis=0)
        f = first_frac if n == n_total else frac
        end = p + f * (c - p)
        segs.append((*p, *end, r, gen))
        q = s - c
        cov = q.T @ q
        w, vecs = np.linalg.eigh(cov)
        axis = vecs[:, -1]
        proj = q @ axis
        # jitter the split a little so that branching is asymmetric and varied
        thr = rng.normal(0.0, 0.15) * np.sqrt(max(w[-1] / n, 1e-9))
        a = proj < thr
        if a.all() or not a.any():
            a = proj < np.median(proj)
            if a.all() or not a.any():
                segs.append((*end, *c, r, gen + 1))
                continue
        for sub in (s[a], s[~a]):
            rc = r * (len(sub) / n) ** (1.0 / 3.0)
            stack.append((end, sub, rc, gen + 1))
    return np.array(segs, dtype=np.float64).reshape(-1, 8)
