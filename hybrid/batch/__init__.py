"""Enhance many series at once on Dask (``dask.distributed``): ``hybrid batch``.

One Dask task per series (a DICOM folder, a NIfTI, HDF5 or NumPy file).  By
default a :class:`distributed.LocalCluster` of worker processes on this machine;
with ``scheduler=`` (CLI ``--scheduler``) a running Dask scheduler, whose
workers may sit on many machines sharing the file system.  Each worker loads
the models once (a worker plugin) with its compute threads capped, so workers
do not oversubscribe the cores.

Every finished series gets a line in ``DIR/manifest.jsonl`` (see
:data:`MANIFEST_FIELDS`); outputs are written atomically.  Re-running the same
command skips the series whose output is present and matches the recorded
SHA-256 (same models, same input), and redoes the others; a failing series is
recorded and does not stop the rest.  One run per output folder at a time
(a lock file says so).

By job: :mod:`~hybrid.batch.plan` (series and output paths; finding series is
:mod:`hybrid.io.discover`), :mod:`~hybrid.batch.manifest` (manifest, digests,
lock), :mod:`~hybrid.batch.run` (Dask), :mod:`~hybrid.batch.worker` (what runs
on the workers), :mod:`~hybrid.batch.cli` (``hybrid batch``).

``import hybrid.batch`` stays light: Dask, TensorFlow and FAISS are imported
when a batch runs (and on the workers).
"""

from __future__ import annotations

from hybrid.batch.cli import add_cli
from hybrid.batch.manifest import MANIFEST_FIELDS, MANIFEST_NAME, Manifest, output_digest
from hybrid.batch.plan import OUTPUT_FORMATS, plan_series
from hybrid.batch.run import BatchSummary, run_batch
from hybrid.io.discover import find_series

__all__ = ["run_batch", "BatchSummary", "Manifest", "plan_series", "output_digest", "add_cli",
           "find_series", "MANIFEST_NAME", "MANIFEST_FIELDS", "OUTPUT_FORMATS"]
