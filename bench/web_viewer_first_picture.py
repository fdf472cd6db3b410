"""Web viewer benchmark: seconds until the first picture of a full-size CT (611 x 512 x 512) appears.

Starts the web app (uvicorn, in this process) with the phantom's folder as a data root, opens the viewer in
headless Chromium (Debian's `chromium`, driven by Playwright through ``executable_path``), opens the CT with
its mask and reports: the time from the click to the downsampled preview on screen (NiiVue has drawn it:
``body[data-viewer=preview]``), and to the full resolution. The phantom is the one
``bench/predict_fullres.py`` builds from KiTS19 ``case_00000`` (built here if missing).

Usage: python bench/web_viewer_first_picture.py [--kits ../shared/data/kits19] [--work runs/bench_fullres]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kits", default="../shared/data/kits19")
    ap.add_argument("--work", default="runs/bench_fullres", help="folder holding (or to receive) the phantom")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--skip-full", action="store_true", help="stop after the first picture")
    args = ap.parse_args()

    import nibabel as nib
    import uvicorn
    from playwright.sync_api import sync_playwright

    from ctdl.web.app import create_app
    from predict_fullres import make_phantom

    work = Path(args.work)
    t = time.time()
    image, mask = make_phantom(Path(args.kits), work)
    print(f"phantom {image}: shape {nib.load(str(image)).shape} ({time.time() - t:.1f} s to build or find)")
    runs = Path(tempfile.mkdtemp(prefix="ctdl-bench-runs-"))
    app = create_app(runs, [image.parent])
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t_start = time.time()
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.02)
    print(f"server answering after {time.time() - t_start:.2f} s")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=[
            "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/#viewer")
        page.wait_for_selector("body[data-ready='1']", timeout=60000)
        page.select_option("#v-root", "data0")
        page.fill("#v-image", image.name)
        page.fill("#v-overlay", mask.name)
        if args.skip_full:
            page.evaluate("window.ctdlSkipFull = true")
        t0 = time.time()
        page.click("#v-open")
        # 'preview' lasts only until the full volume is decoded: either state means the first picture was shown
        page.wait_for_selector("body[data-viewer='preview'], body[data-viewer='full']", timeout=120000)
        # the page's own clock (open clicked -> preview painted, two animation frames later); Playwright's
        # polling can lag behind it because the page's main thread then decodes the full volume
        first = page.evaluate("window.ctdlTimes.first_picture_s")
        print(f"first picture (preview, at most 160 voxels per axis): {first:.2f} s after the click "
              f"(page clock; seen by the test driver after {time.time() - t0:.2f} s)")
        if args.skip_full:
            page.screenshot(path=str(runs / "first_picture.png"))
        else:
            # the page's main thread is busy decoding the full volume: screenshot after it
            page.wait_for_selector("body[data-viewer='full']", timeout=600000)
            print(f"full resolution: {page.evaluate('window.ctdlTimes.full_s'):.2f} s after the click (page clock)")
            page.screenshot(path=str(runs / "full_resolution.png"))
        print(f"screenshots in {runs}")
        browser.close()
    srv.should_exit = True
    return 0 if first <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
