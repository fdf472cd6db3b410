"""End-to-end test of the web UI in headless Chromium (Debian's `chromium`, driven by Playwright for Python
through ``executable_path``; nothing downloads a browser). Skips with the reason when either is missing.

It builds a config from a recipe preset (and sees a server-side error marked on its field), starts a run
(the stub trainer, which follows the run-folder contract at a known pace), watches its loss curve gain
points while it trains, opens its report, compares two runs, checks a dataset, and opens a phantom CT with
its mask in the viewer, checking from a screenshot that the overlay colour lies where the mask is.
Screenshots go to ``$CTDL_SCREENSHOTS`` (default: a temporary folder; ``docs/screenshots`` for the docs).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from .conftest import REPO, STUB, phantom, write_nifti

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CTDL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _require_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (Python) is not installed: pip install playwright (never `playwright install`)")
    if not CHROMIUM:
        pytest.skip("no chromium executable: apt-get install chromium (or set CTDL_CHROMIUM)")
    return sync_playwright


@pytest.fixture(scope="module")
def shots(tmp_path_factory: Any) -> Path:
    out = Path(os.environ.get("CTDL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[str]:
    sync_playwright = _require_browser()  # noqa: F841  (skip before building anything)
    import uvicorn
    import yaml

    from ctdl.web.app import create_app

    tmp = tmp_path_factory.mktemp("web")
    data, runs = tmp / "data", tmp / "runs"
    # viewer phantom: body 40 HU, kidney block (label 1) in a known corner, tumour (label 2) inside it
    img = np.full((64, 64, 24), -1000, np.int16)
    img[8:56, 8:56, 2:22] = 40
    lab = np.zeros(img.shape, np.uint8)
    lab[36:52, 20:40, 6:18] = 1
    lab[42:46, 26:32, 10:14] = 2
    img[lab > 0] = 150
    write_nifti(data / "phantom" / "ct.nii.gz", img, (1.5, 1.5, 3.0))
    write_nifti(data / "phantom" / "mask.nii.gz", lab, (1.5, 1.5, 3.0))
    for i in range(3):  # dataset check: case 2 has a label value 3 and a flipped orientation
        a, b = phantom()
        if i == 2:
            b[0, 0, 0] = 3
        write_nifti(data / "kits19" / f"case_{i:05d}" / "imaging.nii.gz", a, (1.0, 1.0, 3.0), i == 2)
        write_nifti(data / "kits19" / f"case_{i:05d}" / "segmentation.nii.gz", b, (1.0, 1.0, 3.0), i == 2)
    d = runs / "baseline"  # a finished run to compare with
    d.mkdir(parents=True)
    cfg = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    cfg.update(name="baseline")
    cfg["optimizer"]["lr"] = 0.01
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "history.csv").write_text("epoch,lr,train_loss,val_dice_mean\n0,0.01,1.5,0.1\n1,0.01,1.1,0.2\n2,0.01,0.9,0.3\n")
    (d / "summary.json").write_text('{"task": "segmentation", "model": "unet3d_small", "status": "finished", "metrics": {}}')
    os.environ["STUB_EPOCH_S"] = "1.0"
    app = create_app(runs, [data], recipes_dir=REPO / "recipes", train_cmd=[sys.executable, str(STUB)], sse_interval_s=0.2)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        assert time.time() - t0 < 20, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(timeout=5)
    os.environ.pop("STUB_EPOCH_S", None)


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        # SwiftShader gives headless Chromium a software WebGL2 for NiiVue
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
        pg = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        external: list[str] = []  # anything not from this server (data:/blob: are in-page)

        def gate(route: Any) -> None:
            url = route.request.url
            if url.startswith((server, "data:", "blob:")):
                route.continue_()
            else:
                external.append(url)
                route.abort()

        pg.route("**/*", gate)
        pg.external = external
        pg.goto(server + "/")
        pg.wait_for_selector("body[data-ready='1']", timeout=30000)
        pg.errors = errors
        yield pg
        browser.close()


def test_config_preset_validation_and_start_run(page: Any, shots: Path) -> None:
    page.click("button[data-recipe='demo']")
    page.wait_for_function("document.querySelector(\"[name='root[name]']\")?.value === 'demo'")
    assert page.input_value("[name='root[model][name]']") == "unet3d_small"  # a registry choice
    page.fill("[name='root[optimizer][lr]']", "-1")
    page.click("#cfg-validate")
    marked = page.wait_for_selector(".field-error[data-error-loc='optimizer.lr']", timeout=10000)
    assert "greater than 0" in marked.inner_text()
    marked.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "config.png"))
    page.fill("[name='root[optimizer][lr]']", "0.003")
    page.fill("[name='root[training][epochs]']", "6")
    page.fill("[name='root[name]']", "browser_run")
    page.click("#cfg-validate")
    page.wait_for_function("document.querySelector('#cfg-msg').textContent === 'valid'")
    page.click("#cfg-start")
    page.wait_for_selector("#run-title[data-status='running']", timeout=15000)
    # the curve gains points while the run trains (pushed by server-sent events, no reload)
    page.wait_for_function("+document.querySelector('#chart-loss').dataset.points >= 1", timeout=15000)
    first = int(page.get_attribute("#chart-loss", "data-points"))
    page.wait_for_function(f"+document.querySelector('#chart-loss').dataset.points >= {first + 2}", timeout=15000)
    assert page.get_attribute("#run-title", "data-status") == "running"
    page.screenshot(path=str(shots / "runs.png"), full_page=True)
    page.wait_for_selector("#run-title[data-status='finished']", timeout=20000)
    assert page.get_attribute("#chart-loss", "data-points") == "6"
    page.wait_for_function("document.querySelector(\"tr[data-run='browser_run'] td.epoch\")?.textContent === '6 / 6'",
                           timeout=5000)
    with page.expect_popup() as pop:
        page.click("#run-report")
    report = pop.value
    report.wait_for_load_state()
    assert "stub report" in report.content()
    report.close()
    page.check("tr[data-run='browser_run'] .run-check")
    page.check("tr[data-run='baseline'] .run-check")
    page.click("#runs-compare")
    page.wait_for_selector("#compare-diff tbody tr")
    diff = page.inner_text("#compare-diff")
    assert "optimizer.lr" in diff and "training.epochs" in diff
    assert page.get_attribute("#chart-compare", "data-points") == "6"
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
    assert page.errors == []


def test_dataset_check_flags(page: Any, shots: Path) -> None:
    page.click("nav button[data-tab='data']")
    page.select_option("#data-root", "data0")
    page.fill("#data-path", "kits19")
    page.click("#data-check")
    page.wait_for_selector("tr[data-case='case_00002'].flagged", timeout=15000)
    flags = page.inner_text("tr[data-case='case_00002'] td.flag")
    assert "label values [3]" in flags and "differs from most cases" in flags
    assert page.get_attribute("tr[data-case='case_00000']", "class") == ""
    page.screenshot(path=str(shots / "dataset_check.png"), full_page=True)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())


def test_viewer_overlay_colours_where_the_mask_is(page: Any, shots: Path) -> None:
    from PIL import Image

    page.click("nav button[data-tab='viewer']")
    page.select_option("#v-root", "data0")
    page.fill("#v-image", "phantom/ct.nii.gz")
    page.fill("#v-overlay", "phantom/mask.nii.gz")
    page.click("#v-open")
    page.wait_for_selector("body[data-viewer='full']", timeout=30000)
    page.wait_for_selector("#v-volumes tr[data-label='kidney']")
    # kidney block 16 x 20 x 12 voxels minus the 4 x 6 x 4 tumour, at 1.5 x 1.5 x 3 mm = 6.75 ul per voxel
    assert page.inner_text("#v-volumes tr[data-label='kidney'] td:nth-child(3)") == f"{(3840 - 96) * 6.75e-3:.2f}"
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "viewer.png"))
    page.select_option("#v-slice", "0")  # axial only: a single slice fills the canvas
    page.wait_for_timeout(500)
    path = shots / "viewer_axial.png"
    page.locator("#gl").screenshot(path=str(path))
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    body = (abs(r - g) < 6) & (abs(g - b) < 6) & (r > 60) & (r < 120)  # 40 HU in the kidney window: grey ~87
    red = (r > 150) & (g < 110) & (b < 110)  # kidney colour blended over grey
    assert red.sum() > 500, "no overlay colour in the screenshot"
    body = body | red | ((r > 150) & (g > 150) & (b < 120))
    # the body's extent: rows/columns with many body pixels (ignores the grey orientation letters)
    cols, rows = np.nonzero(body.sum(axis=0) > 40)[0], np.nonzero(body.sum(axis=1) > 40)[0]
    bx0, bx1, by0, by1 = cols.min(), cols.max(), rows.min(), rows.max()
    rx0, rx1, ry0, ry1 = _bbox(red)
    # where the kidney is inside the body: i (screen x, patient right = screen right in NiiVue's default)
    # 36..52 of body 8..56; j (screen up = anterior) 20..40 of 8..56, i.e. 0.33..0.75 from the top
    fx = ((rx0 - bx0) / (bx1 - bx0), (rx1 - bx0) / (bx1 - bx0))
    fy = ((ry0 - by0) / (by1 - by0), (ry1 - by0) / (by1 - by0))
    assert fx == pytest.approx((28 / 48, 44 / 48), abs=0.05), fx
    assert fy == pytest.approx((16 / 48, 36 / 48), abs=0.05), fy
    # no overlay: no red
    page.evaluate("document.querySelector('#v-opacity').value = 0; document.querySelector('#v-opacity').dispatchEvent(new Event('input'))")
    page.wait_for_timeout(300)
    page.locator("#gl").screenshot(path=str(shots / "viewer_no_overlay.png"))
    rgb0 = np.asarray(Image.open(shots / "viewer_no_overlay.png").convert("RGB")).astype(int)
    assert ((rgb0[..., 0] > 150) & (rgb0[..., 1] < 110) & (rgb0[..., 2] < 110)).sum() < 20
    page.select_option("#v-slice", "3")
    assert page.errors == []
    assert page.external == [], "the page asked the internet for something"
