"""End-to-end test of the web UI in headless Chromium (Debian's `chromium`, driven by Playwright for Python
through ``executable_path``; nothing downloads a browser). Skips with the reason when either is missing.

It builds a config from a recipe preset (and sees a server-side error marked on its field), starts a real tiny
`ctdl train` from a preset derived from ``recipes/demo.yaml`` (four phantoms rendered from KiTS19 masks at
6 x 4 x 4 mm, a small 3D U-Net, 24 epochs of 2 steps, validation every epoch), watches its loss curve gain
points while it trains, opens its report, its per-case table and a case in the viewer, moves the epoch slider
of its live validation previews, compares two runs, checks a dataset, and opens a phantom CT with its mask in
the viewer, checking from a screenshot that the overlay colour lies where the mask is.
Screenshots go to ``$CTDL_SCREENSHOTS`` (default: a temporary folder; ``docs/screenshots`` for the docs).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from .conftest import REPO, phantom, write_nifti

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CTDL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
KITS = Path(os.environ.get("CTDL_SHARED", REPO.parent / "shared")) / "data" / "kits19"
EPOCHS = 24  # of 2 steps each: about 0.15 s per epoch here, so the curve is seen growing for a few seconds


def tiny_recipe(demo: dict[str, Any], cache: Path) -> dict[str, Any]:
    """``recipes/demo.yaml`` shrunk to a run of seconds: 4 phantoms at 6 x 4 x 4 mm (2 train, 1 val, 1 test)."""
    cfg = {**demo, "name": "web_tiny"}
    cfg["data"] = {**demo["data"], "synth_source": str(KITS), "synth_spacing": [6.0, 4.0, 4.0],
                   "synth_margin_slices": 2, "cases": 4, "cache_dir": str(cache),
                   "split": {"train": 0.5, "val": 0.25, "test": 0.25}}
    cfg["sampling"] = {**demo["sampling"], "patch_size": [16, 64, 64], "samples_per_volume": 2}
    cfg["model"] = {"name": "unet3d_small", "params": {"channels": [16, 32, 64], "strides": [2, 2], "num_res_units": 0}}
    cfg["training"] = {**demo["training"], "epochs": EPOCHS, "batch_size": 2, "steps_per_epoch": 2, "val_every": 1,
                       "threads": 1}
    cfg["inference"] = {"method": "sliding_window", "roi_size": [16, 64, 64], "two_stage": False}
    cfg["evaluation"] = {"report_cases": 1, "previews": True}
    cfg["checkpoint"] = {"tensorboard": False}
    return cfg


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
    demo = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    cfg = {**demo, "name": "baseline", "optimizer": {**demo["optimizer"], "lr": 0.01}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "history.csv").write_text("epoch,lr,train_loss,val_dice_mean\n0,0.01,1.5,0.1\n1,0.01,1.1,0.2\n2,0.01,0.9,0.3\n")
    (d / "summary.json").write_text('{"task": "segmentation", "model": "unet3d_small", "status": "finished", "metrics": {}}')
    # presets: the demo recipe, and a tiny one derived from it (phantoms cached inside the data root, so the
    # case browser can open the test case's CT)
    recipes = tmp / "recipes"
    recipes.mkdir()
    shutil.copy(REPO / "recipes" / "demo.yaml", recipes / "demo.yaml")
    (recipes / "web_tiny.yaml").write_text("# demo.yaml at a scale of seconds (browser test)\n"
                                           + yaml.safe_dump(tiny_recipe(demo, data / "phantom_cache"), sort_keys=False))
    app = create_app(runs, [data], recipes_dir=recipes, workdir=tmp, sse_interval_s=0.2)
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
    for proc in list(app.state.manager._procs.values()):  # a failed test leaves no training behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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


def _label_counts(path: Path) -> dict[str, str]:
    """Voxels per foreground label of a label map, as the viewer's volume table prints them."""
    import nibabel as nib

    counts = np.bincount(np.asarray(nib.load(str(path)).dataobj).astype(int).ravel(), minlength=3)
    return {name: str(int(counts[k])) for k, name in ((1, "kidney"), (2, "tumor")) if counts[k] > 0}


def _table_counts(page: Any) -> dict[str, str]:
    return {tr.get_attribute("data-label"): tr.inner_text().split("\t")[1]
            for tr in page.query_selector_all("#v-volumes tbody tr")}


def test_config_preset_validation_and_start_run(page: Any, shots: Path, server: str) -> None:
    if not KITS.is_dir():
        pytest.skip(f"KiTS19 masks not found at {KITS} (set CTDL_SHARED): the tiny run renders phantoms from them")
    page.click("button[data-recipe='demo']")
    page.wait_for_function("document.querySelector(\"[name='root[name]']\")?.value === 'demo'")
    assert page.input_value("[name='root[model][name]']") == "unet3d_small"  # a registry choice
    page.fill("[name='root[optimizer][lr]']", "-1")
    page.click("#cfg-validate")
    marked = page.wait_for_selector(".field-error[data-error-loc='optimizer.lr']", timeout=10000)
    assert "greater than 0" in marked.inner_text()
    marked.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "config.png"))
    # the tiny preset (demo.yaml shrunk), edited in the form, then a real `ctdl train` started from the page
    page.click("button[data-recipe='web_tiny']")
    page.wait_for_function("document.querySelector(\"[name='root[name]']\")?.value === 'web_tiny'")
    page.fill("[name='root[optimizer][lr]']", "0.003")
    page.fill("[name='root[name]']", "browser_run")
    page.click("#cfg-validate")
    page.wait_for_function("document.querySelector('#cfg-msg').textContent === 'valid'")
    page.click("#cfg-start")
    page.wait_for_selector("#run-title[data-status='running']", timeout=30000)
    # the curve gains points while the run trains (pushed by server-sent events, no reload): every point count
    # the page shows while the run is still 'running' is recorded
    seen: list[int] = []
    t0, shot = time.time(), False
    while True:
        status = page.get_attribute("#run-title", "data-status")
        points = int(page.get_attribute("#chart-loss", "data-points") or 0)
        if status == "running" and points and points not in seen:
            seen.append(points)
            if not shot and points >= 4:
                page.screenshot(path=str(shots / "runs_training.png"), full_page=True)
                shot = True
        if status != "running":
            break
        assert time.time() - t0 < 180, f"the run did not finish: points seen {seen}"
        page.wait_for_timeout(50)
    assert status == "finished", page.inner_text("#run-log")[-3000:]
    assert len(seen) >= 3 and seen == sorted(seen) and seen[0] < EPOCHS, seen  # grew while it trained
    page.wait_for_selector("#run-report:not(.hidden)", timeout=10000)
    assert page.get_attribute("#chart-loss", "data-points") == str(EPOCHS)
    assert int(page.get_attribute("#chart-metrics", "data-points")) == EPOCHS  # validated every epoch
    page.wait_for_function("document.querySelector(\"tr[data-run='browser_run'] td.epoch\")?.textContent === "
                           f"'{EPOCHS} / {EPOCHS}'", timeout=5000)
    page.screenshot(path=str(shots / "runs.png"), full_page=True)
    with page.expect_popup() as pop:
        page.click("#run-report")
    report = pop.value
    report.wait_for_load_state()
    assert "ctdl run <code>browser_run</code>" in report.content() and "Per-case metrics" in report.content()
    report.close()
    assert page.errors == []


def test_case_browser_opens_the_test_case(page: Any, shots: Path, server: str) -> None:
    if page.get_attribute("#run-title", "data-status") != "finished":
        pytest.skip("needs the finished run of test_config_preset_validation_and_start_run")
    page.click("#run-cases")
    row = page.wait_for_selector("#cases-table tr.case-row", timeout=10000)
    assert len(page.query_selector_all("#cases-table tr.case-row")) == 1  # one test case (4 cases, 25 % test)
    dice = float(row.inner_text().split("\t")[1])
    assert 0.0 <= dice <= 1.0
    page.screenshot(path=str(shots / "cases.png"), full_page=True)
    row.click()
    page.wait_for_selector("body[data-tab='viewer'][data-viewer='full']", timeout=30000)
    legend = page.inner_text("#v-legend")
    assert "false positive" in legend and "false negative" in legend  # prediction against truth, coloured apart
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "case_viewer.png"))
    assert page.errors == []


def test_epoch_slider_of_live_validation_previews(page: Any, shots: Path, server: str) -> None:
    if page.get_attribute("#run-title", "data-status") != "finished":
        pytest.skip("needs the finished run of test_config_preset_validation_and_start_run")
    page.click("nav button[data-tab='runs']")
    page.click("#run-previews")
    last = f"epoch_{EPOCHS - 1:03d}"
    page.wait_for_selector(f"body[data-preview-epoch='{last}'][data-viewer='full']", timeout=30000)
    epochs = page.get_attribute("#v-epoch", "data-epochs").split(",")
    assert epochs == [f"epoch_{e:03d}" for e in range(EPOCHS)]  # one preview per validation epoch
    assert page.input_value("#v-image").endswith(".nii.gz") and "/previews/ct/" in page.input_value("#v-image")
    pv = Path(page.evaluate("fetch('/api/info').then(r => r.json())")["roots"][0]["path"])
    overlay = pv / page.input_value("#v-overlay")
    assert overlay.name.endswith(".nii.gz") and overlay.parent.name == last
    page.wait_for_selector("#v-volumes tbody tr", timeout=10000)
    assert _table_counts(page) == _label_counts(overlay)  # the volume table is that epoch's prediction
    page.wait_for_timeout(300)
    late = page.locator("#gl").screenshot()
    # move the slider to the first epoch: the untrained prediction loads
    page.evaluate("s => { s.value = 0; s.dispatchEvent(new Event('input')); }", page.query_selector("#v-epoch"))
    page.wait_for_selector("body[data-preview-epoch='epoch_000'][data-viewer='full']", timeout=30000)
    first = pv / page.input_value("#v-overlay")
    assert first.parent.name == "epoch_000"
    page.wait_for_function("document.querySelector('#v-epoch-label').textContent.startsWith('epoch_000')")
    page.wait_for_timeout(300)
    assert _table_counts(page) == _label_counts(first)
    assert _label_counts(first) != _label_counts(overlay), "epochs 0 and last predicted the same voxels"
    assert page.locator("#gl").screenshot() != late  # a different picture
    page.screenshot(path=str(shots / "viewer_previews.png"))
    assert page.errors == []


def test_compare_runs(page: Any, shots: Path, server: str) -> None:
    if not page.query_selector("tr[data-run='browser_run']"):
        pytest.skip("needs the run of test_config_preset_validation_and_start_run")
    page.click("nav button[data-tab='runs']")
    page.check("tr[data-run='browser_run'] .run-check")
    page.check("tr[data-run='baseline'] .run-check")
    page.click("#runs-compare")
    page.wait_for_selector("#compare-diff tbody tr")
    diff = page.inner_text("#compare-diff")
    assert "optimizer.lr" in diff and "training.epochs" in diff
    assert page.get_attribute("#chart-compare", "data-points") == str(EPOCHS)
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
