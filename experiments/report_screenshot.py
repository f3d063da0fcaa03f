"""The README's report figure: `hybrid enhance --report` on a real chest CT at a simulated
2 % dose, rendered by headless Chromium (issue 18).

    python experiments/report_screenshot.py [--out docs/figures/report.png]

Takes 8 central slices of ``lung-pet-ct-dx-a0001/kernel-B-5mm`` (../shared/data/ct),
simulates their 2 % dose (:func:`hybrid.physics.simulate_low_dose`, seed 7), enhances them
with the shipped models and writes ``out/report/report.html`` and the screenshot.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/figures/report.png"))
    p.add_argument("--html", type=Path, default=Path("out/report/report.html"))
    args = p.parse_args()
    import hybrid
    from hybrid.data import default_ct_root
    from hybrid.physics import kernel_for, simulate_low_dose
    from hybrid.series_report import write_report

    vol = hybrid.load(default_ct_root() / "lung-pet-ct-dx-a0001" / "kernel-B-5mm")
    mid = len(vol) // 2
    nd = vol.slab(mid - 4, mid + 4)
    uld = simulate_low_dose(nd, 0.02, rng=np.random.default_rng(7),
                            kernel=kernel_for(nd.provenance.kernel), progress=False)
    enh = hybrid.Enhancer().prepare()
    out, maps = enh.enhance(uld, return_maps=True)
    args.html.parent.mkdir(parents=True, exist_ok=True)
    write_report(args.html, uld, out, maps, enh.last_info, overwrite=True,
                 title="Lung-PET-CT-Dx A0001 (TCIA, CC BY 4.0), 8 slices, simulated 2 % dose")
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no Chromium on PATH (Debian: apt-get install chromium)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={args.out.resolve()}", "--window-size=1400,1500",
                    args.html.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image  # a 256-colour palette: a third of the size, no visible change

    Image.open(args.out).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"report {args.html}\nscreenshot {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
