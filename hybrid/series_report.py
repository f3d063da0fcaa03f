"""One self-contained HTML page per enhanced series: what went in, what came out, how.

``hybrid enhance INPUT OUTPUT --report report.html`` and ``hybrid batch ... --report``
(one page per series and an index page) write it with :func:`write_report`:

* before / after at a few levels (default three, spread over the slices that hold lung),
  each in the lung (-600/1500) and the soft-tissue (40/400) window;
* the source map at those levels: each pixel's share of the input (red), the patch
  dictionary (green) and the CNN pair (blue), black outside the body;
* the estimated soft-tissue noise before and after (:func:`hybrid.cnn.noise.estimate_noise`,
  inside the body), the input's reading and what was done about it;
* the settings and models used (with their digests), the per-stage timings;
* the no-diagnostic-claim notice.

Images are PNG embedded as ``data:`` URIs: the page needs no network and no other file.
No patient data is written: the series is named by its UIDs only.  Written atomically.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from hybrid._version import __version__

__all__ = ["write_report", "write_index", "report_levels", "NOTICE"]

NOTICE = ("Research software, no diagnostic claim. This page shows what the software did to "
          "the series; it is not a reading of the scan, and its numbers are estimates on "
          "this series alone (no reference image).")
_IMAGE_PX = 256  # width of each embedded image (CSS pixels)
_STORED_PX = 384  # most pixels stored per image side (a 512 slice: every 2nd, 256)


def report_levels(lung_mask: np.ndarray, n: int = 3) -> list[int]:
    """``n`` slice indices spread over the slices holding lung (all slices without any)."""
    nz = lung_mask.shape[0]
    with_lung = np.flatnonzero(lung_mask.reshape(nz, -1).any(1))
    pool = with_lung if len(with_lung) else np.arange(nz)
    if len(pool) <= n:
        return [int(z) for z in pool]
    picks = np.linspace(0, len(pool) - 1, n + 2)[1:-1]  # inner points: not the edge slices
    return sorted({int(pool[int(round(p))]) for p in picks})


def _png(rgb_or_gray: np.ndarray, *, vmin: float | None = None, vmax: float | None = None) -> str:
    """A ``data:image/png;base64`` URI of a 2-D (windowed) or RGB image, at most
    :data:`_STORED_PX` pixels wide (every n-th pixel: no smoothing of the noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(rgb_or_gray)
    step = max(1, int(np.ceil(max(img.shape[:2]) / _STORED_PX)))
    img = img[::step, ::step]
    buf = io.BytesIO()
    if img.ndim == 2:
        plt.imsave(buf, img, cmap="gray", vmin=vmin, vmax=vmax, format="png")
    else:
        plt.imsave(buf, np.clip(img, 0, 1), format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _source_rgb(input_weight: np.ndarray, dictionary_weight: np.ndarray,
                body: np.ndarray) -> np.ndarray:
    """Input (red), dictionary (green), CNN (blue) shares of one slice; black outside."""
    w_in = np.broadcast_to(input_weight, body.shape).astype(np.float32)
    w_dict = np.asarray(dictionary_weight, np.float32)
    w_cnn = np.clip(1.0 - w_in - w_dict, 0.0, 1.0)
    rgb = np.stack([w_in, w_dict, w_cnn], axis=-1)
    rgb[~body] = 0.0
    return rgb


def _noise_after(enhanced: np.ndarray, body: np.ndarray) -> float | None:
    from hybrid.cnn.noise import estimate_noise

    try:
        return round(float(np.median(estimate_noise(enhanced, body).sigma_hu)), 1)
    except ValueError:  # too little soft tissue to say
        return None


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows)
    return f"<table>{cells}</table>"


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1500px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.notice { background: #fff4d6; border: 1px solid #e0b84c; padding: .6em .9em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; font-size: .9em; }
th { background: #f3f3f3; font-weight: normal; }
.level { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 12px; }
figure { margin: 0; width: IMAGE_PXpx; } figcaption { font-size: .8em; text-align: center; }
img { width: IMAGE_PXpx; height: auto; background: #000; display: block; }
""".replace("IMAGE_PX", str(_IMAGE_PX))


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


def write_report(path: str | os.PathLike, source: Any, enhanced: Any, maps: Any,
                 info: dict[str, Any], *, levels: int = 3, overwrite: bool = False,
                 title: str | None = None) -> Path:
    """Write the report of one enhancement to ``path`` (atomically); returns the path.

    Parameters
    ----------
    source, enhanced : Volume or ndarray (Z, Y, X) or (Y, X), HU
        What went into :meth:`hybrid.Enhancer.enhance` and what came out.
    maps : EnhanceMaps
        Its maps (``return_maps=True``).
    info : dict
        Its :attr:`hybrid.Enhancer.last_info`.
    levels : int
        How many slices to show (spread over the lungs).
    title : str, optional
        The page's heading; default: the series UID where the source is a Volume.
    """
    from hybrid.io._atomic import atomic_file
    from hybrid.metrics import LUNG, SOFT_TISSUE
    from hybrid.pipeline import describe_reading

    src = np.asarray(getattr(source, "array", source), np.float32)
    out = np.asarray(getattr(enhanced, "array", enhanced), np.float32)
    if src.shape != out.shape:
        raise ValueError(f"Expected the source and the enhanced image of one shape; received "
                         f"{src.shape} and {out.shape}.")
    if src.ndim == 2:
        src, out = src[None], out[None]
    if src.ndim != 3:
        raise ValueError(f"Expected a 2-D slice or a 3-D volume; received shape {src.shape}.")
    # the maps with a slice axis, also for a 2-D input
    body = np.asarray(maps.body_mask, bool).reshape(src.shape)
    lung = np.asarray(maps.lung_mask, bool).reshape(src.shape)
    w_in = np.asarray(maps.input_weight, np.float32).reshape(src.shape)
    w_dict = np.asarray(maps.dictionary_weight, np.float32).reshape(src.shape)

    prov = getattr(source, "provenance", None)
    uid = getattr(prov, "series_uid", None)
    heading = title or (f"Series {uid}" if uid else "Enhanced image")
    reading = dict(info.get("input", {}))
    after = _noise_after(out, body)

    parts = [f"<h1>hybrid enhancement report: {html.escape(heading)}</h1>",
             f"<p class=\"notice\"><b>{html.escape(NOTICE)}</b></p>"]
    summary = [
        ("series UID", uid or "(not DICOM)"),
        ("slices, size", f"{src.shape[0]} x {src.shape[1]} x {src.shape[2]}"),
        ("spacing (mm, z y x)", " x ".join(f"{v:.3g}" for v in source.spacing)
         if hasattr(source, "spacing") else "unknown"),
        ("estimated noise before (HU, soft tissue in the body)", reading.get("noise_hu", "n/a")),
        ("estimated noise after (HU, same)", after if after is not None else "n/a"),
        ("input reading", describe_reading(reading) if reading else "n/a"),
        ("hybrid version", info.get("version", __version__)),
        ("written", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")),
    ]
    parts += ["<h2>Summary</h2>", _table(summary)]

    with_dict = getattr(maps, "dictionary", None) is not None
    sources = ("the input (red), the patch dictionary (green) and the CNN pair (blue)"
               if with_dict else "the input (red) and the CNN pair (blue; no dictionary "
               "was used)")
    parts.append("<h2>Before and after</h2><p>Columns: input and enhanced in the "
                 f"{LUNG} window, then in the {SOFT_TISSUE} window, then the source "
                 f"map: the share of each pixel taken from {sources}; black outside the "
                 "body.</p>")
    for z in report_levels(lung, levels):
        figs = []
        for win in (LUNG, SOFT_TISSUE):
            for name, img in (("input", src[z]), ("enhanced", out[z])):
                figs.append((_png(img, vmin=win.low, vmax=win.high),
                             f"slice {z + 1} of {src.shape[0]}: {name}, {win} window"))
        figs.append((_png(_source_rgb(w_in[z], w_dict[z], body[z])),
                     f"slice {z + 1}: source map (input / {'dictionary / ' if with_dict else ''}CNN)"))
        parts.append("<div class=\"level\">" + "".join(
            f"<figure><img alt=\"{html.escape(cap)}\" src=\"{uri}\">"
            f"<figcaption>{html.escape(cap)}</figcaption></figure>" for uri, cap in figs)
            + "</div>")

    stages = info.get("seconds_by_stage", {})
    parts += ["<h2>Timings</h2>", _table(
        [(f"{k} (s)", v) for k, v in stages.items()] + [("total (s)", info.get("seconds"))])]
    models = info.get("models", {})
    settings = [(f"model: {k}", v) for k, v in models.items()]
    settings += [(k, info.get(k)) for k in ("stride", "k", "batch_slices", "calibration_check",
                                            "dose_fraction", "dose_fraction_effect")]
    settings.append(("blender", info.get("blender")))
    parts += ["<h2>Settings and models</h2>", _table(settings)]
    page = _page(f"hybrid report {heading}", "\n".join(parts))
    with atomic_file(Path(path), overwrite=overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)


def write_index(path: str | os.PathLike, records: list[dict[str, Any]], *,
                overwrite: bool = True) -> Path:
    """The index page of a batch's reports: one row per series (status, slices, noise
    before and after, seconds, a link to its report where there is one)."""
    from hybrid.io._atomic import atomic_file

    base = Path(path).parent
    rows = []
    for i, r in enumerate(records):
        report = r.get("report") if r.get("status") == "done" else None
        report = report if report and Path(report).is_file() else None
        link = (f"<a href=\"{html.escape(os.path.relpath(report, base))}\">report</a>"
                if report else "")
        # UIDs only: a folder name may hold a patient's name
        cells = [r.get("series_uid") or f"series {i + 1} (no UID)", r.get("status"),
                 r.get("slices"), r.get("noise_before_hu"), r.get("noise_after_hu"),
                 (r.get("timings_s") or {}).get("total"), r.get("error") or ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c if c is not None else ''))}</td>"
                                     for c in cells) + f"<td>{link}</td></tr>")
    head = ("<tr><th>series</th><th>status</th><th>slices</th><th>noise before (HU)</th>"
            "<th>noise after (HU)</th><th>seconds</th><th>error</th><th></th></tr>")
    body = (f"<h1>hybrid batch: {len(records)} series</h1>"
            f"<p class=\"notice\"><b>{html.escape(NOTICE)}</b></p>"
            f"<table>{head}{''.join(rows)}</table>")
    with atomic_file(Path(path), overwrite=overwrite) as tmp:
        tmp.write_text(_page("hybrid batch reports", body), encoding="utf-8")
    return Path(path)
