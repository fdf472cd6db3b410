"""The `ctdl serve` web app: config builder, runs (queue, live curves by server-sent events, logs, compare,
reports), dataset check, and a CT viewer with label/prediction overlays.

Everything is local: the page and its vendored libraries are served from the package; the API reads only
inside the runs folder and the data folders (:mod:`ctdl.web.paths`). Without a token only loopback clients
are answered; with one, every request must carry it (header ``X-Ctdl-Token``, ``Authorization: Bearer``,
query ``token`` or the cookie the page gets after its first authenticated load).
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import yaml
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ctdl import __version__
from ctdl.errors import CtdlError
from ctdl.io.atomic import atomic_write_text
from ctdl.web import configs as cfgs
from ctdl.web.paths import PathRefused, Roots, is_volume_name, sanitize_name
from ctdl.web.runs import LOG_FILE, RunManager, config_diff, find_error, read_history, tail
from ctdl.web.volumes import BadVolume, check_upload, error_map, label_volumes, load_nifti, make_preview

STATIC = Path(__file__).parent / "static"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
TOKEN_COOKIE = "ctdl_token"


def _default_recipes() -> Path | None:
    for cand in (Path.cwd() / "recipes", Path(__file__).resolve().parents[3] / "recipes"):
        if cand.is_dir():
            return cand
    return None


def create_app(runs_dir: str | Path, data_dirs: Sequence[str | Path] = (), token: str | None = None, *,
               recipes_dir: str | Path | None = None, max_parallel: int = 1, train_cmd: Sequence[str] | None = None,
               upload_limit_mb: float = 2048.0, workdir: str | Path | None = None,
               sse_interval_s: float = 1.0) -> FastAPI:
    """Build the app. ``train_cmd`` replaces ``ctdl train`` (tests use a stub); the config path and
    ``--quiet`` are appended to it. ``upload_limit_mb`` caps one upload (HTTP 413 past it)."""
    runs_path = Path(runs_dir).resolve()
    runs_path.mkdir(parents=True, exist_ok=True)
    roots = Roots(runs_path, tuple(Path(d).resolve() for d in data_dirs))
    recipes = Path(recipes_dir) if recipes_dir else _default_recipes()
    manager = RunManager(runs_path, train_cmd=train_cmd, max_parallel=max_parallel, workdir=Path(workdir or Path.cwd()))
    cache = Path(tempfile.mkdtemp(prefix="ctdl-web-cache-"))
    upload_limit = int(upload_limit_mb * 1024 * 1024)
    configs_dir = runs_path / "_configs"
    uploads_dir = runs_path / "_uploads"
    predictions: dict[str, dict[str, Any]] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager.start()
        # the registries import torch and every model (seconds): warm them without delaying the first page
        threading.Thread(target=cfgs.registries, daemon=True).start()
        yield
        manager.stop()

    app = FastAPI(title="ctdl", version=__version__, lifespan=lifespan)
    app.state.manager = manager
    app.state.roots = roots

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = request.client.host if request.client else ""
        if token is None:
            if host not in LOOPBACK:
                return JSONResponse({"detail": f"client {host} refused: this server answers loopback clients only "
                                               "(start it with --token to serve other hosts)"}, status_code=403)
            return await call_next(request)
        auth = request.headers.get("authorization", "")
        given = (request.headers.get("x-ctdl-token") or (auth[7:] if auth.lower().startswith("bearer ") else None)
                 or request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"detail": "missing or wrong token: pass ?token=..., header X-Ctdl-Token, "
                                           "or Authorization: Bearer"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(PathRefused)
    async def _refused(request: Request, exc: PathRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(BadVolume)
    async def _bad(request: Request, exc: BadVolume) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(CtdlError)
    async def _ctdl(request: Request, exc: CtdlError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    # ------------------------------------------------------------------ page
    @app.get("/", response_class=HTMLResponse)
    def index() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"version": __version__, "roots": roots.describe(), "max_parallel": manager.max_parallel,
                "upload_limit_mb": upload_limit_mb, "recipes_dir": str(recipes) if recipes else None}

    # --------------------------------------------------------------- configs
    @app.get("/api/schema")
    def schema() -> dict[str, Any]:
        return cfgs.form_schema()

    @app.get("/api/registries")
    def registries() -> dict[str, Any]:
        return cfgs.registries()

    @app.get("/api/recipes")
    def recipe_list() -> list[dict[str, str]]:
        return cfgs.list_recipes(recipes)

    @app.get("/api/recipes/{name}")
    def recipe(name: str) -> dict[str, Any]:
        names = {r["name"] for r in cfgs.list_recipes(recipes)}
        if name not in names or recipes is None:
            raise HTTPException(404, f"no recipe {name!r}; available: {', '.join(sorted(names))}")
        path = next(p for p in (recipes / f"{name}.yaml", recipes / f"{name}.yml") if p.exists())
        text = path.read_text()
        data, errors = cfgs.parse_yaml(text)
        return {"name": name, "yaml": text, "config": data, "errors": errors}

    def _config_from_body(body: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if isinstance(body.get("config"), dict):
            return body["config"], []
        if isinstance(body.get("yaml"), str):
            return cfgs.parse_yaml(body["yaml"])
        if isinstance(body.get("saved"), str):
            p = configs_dir / f"{sanitize_name(body['saved'])}.yaml"
            if not p.exists():
                return None, [{"loc": "<saved>", "path": [], "msg": f"no saved config {body['saved']!r}"}]
            return cfgs.parse_yaml(p.read_text())
        return None, [{"loc": "<body>", "path": [], "msg": "send {'config': {...}} or {'yaml': '...'}"}]

    @app.post("/api/config/validate")
    def validate(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        data, errors = _config_from_body(body)
        if data is None:
            return {"ok": False, "errors": errors}
        return cfgs.validate(data)

    @app.post("/api/configs")
    def save(body: dict[str, Any] = Body(...)) -> JSONResponse:
        data, errors = _config_from_body(body)
        result = cfgs.validate(data) if data is not None else {"ok": False, "errors": errors}
        if not result["ok"]:
            return JSONResponse(result, status_code=422)
        name = sanitize_name(str(body.get("name") or result["config"].get("name") or "config"))
        name = name.removesuffix(".yaml")
        configs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(configs_dir / f"{name}.yaml", result["yaml"])
        return JSONResponse({"ok": True, "name": name, "path": f"_configs/{name}.yaml"})

    @app.get("/api/configs")
    def saved_configs() -> list[str]:
        return sorted(p.stem for p in configs_dir.glob("*.yaml")) if configs_dir.is_dir() else []

    @app.get("/api/configs/{name}")
    def download_config(name: str) -> Response:
        p = configs_dir / f"{sanitize_name(name)}.yaml"
        if not p.exists():
            raise HTTPException(404, f"no saved config {name!r}")
        return FileResponse(p, media_type="application/x-yaml", filename=p.name)

    # ------------------------------------------------------------------ runs
    def _run(name: str) -> Path:
        try:
            return manager.run_dir(name)
        except KeyError:
            raise HTTPException(404, f"no run {name!r} in {runs_path}") from None

    @app.get("/api/runs")
    def runs() -> list[dict[str, Any]]:
        manager.pump()
        return manager.list_runs()

    @app.post("/api/runs")
    def start_run(body: dict[str, Any] = Body(...)) -> JSONResponse:
        data, errors = _config_from_body(body)
        result = cfgs.validate(data) if data is not None else {"ok": False, "errors": errors}
        if not result["ok"]:
            return JSONResponse(result, status_code=422)
        name = manager.submit(result["config"])
        return JSONResponse({"ok": True, "name": name, "status": manager.status(runs_path / name)})

    @app.get("/api/runs/{name}")
    def run_detail(name: str) -> dict[str, Any]:
        d = _run(name)
        log = tail(d / LOG_FILE)
        return {**manager.describe(d), "history": read_history(d), "config": manager.read_config(d),
                "log": log, "log_error": find_error(log)}

    @app.get("/api/runs/{name}/history")
    def run_history(name: str) -> dict[str, Any]:
        return read_history(_run(name))

    @app.get("/api/runs/{name}/log")
    def run_log(name: str, n_bytes: int = Query(20000, ge=1, le=2_000_000)) -> dict[str, Any]:
        log = tail(_run(name) / LOG_FILE, n_bytes)
        return {"log": log, "error": find_error(log)}

    @app.post("/api/runs/{name}/cancel")
    def cancel(name: str) -> dict[str, Any]:
        _run(name)
        try:
            status = manager.cancel(name)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"ok": True, "name": name, "status": status}

    @app.get("/api/runs/{name}/files/{path:path}")
    def run_file(name: str, path: str) -> Response:
        _run(name)
        p = roots.resolve("runs", f"{name}/{path}")
        if not p.is_file():
            raise HTTPException(404, f"{name}/{path}: no such file")
        return FileResponse(p)

    @app.get("/api/runs/{name}/cases")
    def run_cases(name: str) -> dict[str, Any]:
        """Per-case metrics (metrics.csv) with where each case's image, truth and prediction are."""
        d = _run(name)
        mpath = d / "metrics.csv"
        if not mpath.exists():
            raise HTTPException(404, f"{name}: no metrics.csv (the run has not been evaluated)")
        with mpath.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        locs: dict[str, Any] = {}
        tc = d / "test_cases.json"
        if tc.exists():
            locs = json.loads(tc.read_text())
        out = []
        for r in rows:
            cid = r.get("case_id", "")
            item: dict[str, Any] = {k: _float(v) for k, v in r.items()}
            item["case_id"] = cid
            for key, rel in (("image", (locs.get(cid) or {}).get("image")), ("truth", (locs.get(cid) or {}).get("label"))):
                item[key] = _locate(rel, manager.workdir)
            pred = d / "predictions" / f"{cid}.nii.gz"
            item["prediction"] = _locate(str(pred), manager.workdir) if pred.exists() else None
            out.append(item)
        return {"name": name, "columns": list(rows[0].keys()) if rows else [], "cases": out,
                "previews": _previews(d)}

    def _previews(d: Path) -> dict[str, Any]:
        from ctdl.engine.previews import PREVIEW_DIR, list_previews

        found = list_previews(d)
        for cid, item in found["cases"].items():  # paths inside the runs root (/api/volume/runs/...)
            item["ct"] = f"{d.name}/{item['ct']}"
            item["predictions"] = {ep: f"{d.name}/{PREVIEW_DIR}/{ep}/{cid}.nii.gz" for ep in item["epochs"]}
        return found

    @app.get("/api/runs/{name}/previews")
    def run_previews(name: str) -> dict[str, Any]:
        """Live validation previews (``evaluation.previews``): the preview case's CT and one prediction per
        validation epoch, as paths in the runs root; the list grows while the run trains."""
        d = _run(name)
        return {"name": name, "status": manager.status(d), **_previews(d)}

    def _locate(rel: str | None, base: Path) -> dict[str, str] | None:
        if not rel:
            return None
        p = Path(rel)
        p = p if p.is_absolute() else base / p
        loc = roots.locate(p) if p.exists() else None
        return {"root": loc[0], "path": loc[1]} if loc else None

    @app.get("/api/compare")
    def compare(runs: list[str] = Query(...)) -> dict[str, Any]:
        dirs = {n: _run(n) for n in runs}
        return {"runs": list(dirs), "histories": {n: read_history(d) for n, d in dirs.items()},
                "diff": config_diff({n: _resolved(manager.read_config(d)) for n, d in dirs.items()}),
                "metrics": {n: manager.describe(d)["metrics"] for n, d in dirs.items()}}

    @app.get("/api/events")
    async def events(request: Request, watch: str = "", once: bool = False) -> StreamingResponse:
        """One server-sent-event stream per page: ``runs`` (the list, when it changes), ``history`` and
        ``log`` (for the watched runs, when their files change)."""
        watched = [w for w in watch.split(",") if w]

        def sig(p: Path) -> tuple[float, int] | None:
            try:
                st = p.stat()
                return (st.st_mtime, st.st_size)
            except OSError:
                return None

        async def gen() -> AsyncIterator[str]:
            last_runs = ""
            seen: dict[str, Any] = {}
            last_beat = time.time()
            yield "retry: 2000\n\n"
            while True:
                # file reads off the event loop: other requests keep flowing while the folders are scanned
                listing = await asyncio.to_thread(lambda: (manager.pump(), json.dumps(manager.list_runs(), default=str))[1])
                if listing != last_runs:
                    last_runs = listing
                    yield f"event: runs\ndata: {listing}\n\n"
                for name in watched:
                    d = runs_path / name
                    if not d.is_dir() or "/" in name or name.startswith((".", "_")):
                        continue
                    for kind, f in (("history", "history.csv"), ("log", LOG_FILE)):
                        s = sig(d / f)
                        if s is not None and seen.get((name, kind)) != s:
                            seen[(name, kind)] = s
                            if kind == "history":
                                payload = {"name": name, "history": await asyncio.to_thread(read_history, d)}
                            else:
                                log = await asyncio.to_thread(tail, d / LOG_FILE, 8000)
                                payload = {"name": name, "log": log, "error": find_error(log)}
                            yield f"event: {kind}\ndata: {json.dumps(payload)}\n\n"
                if once or await request.is_disconnected():
                    return
                if time.time() - last_beat > 15:
                    last_beat = time.time()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(sse_interval_s)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ----------------------------------------------------------- files/data
    @app.get("/api/files")
    def files(root: str = "runs", path: str = "") -> dict[str, Any]:
        p = roots.resolve(root, path)
        if not p.is_dir():
            raise HTTPException(404, f"{root}/{path}: not a folder")
        entries = []
        for c in sorted(p.iterdir()):
            if c.name.startswith("."):
                continue
            if c.is_dir():
                entries.append({"name": c.name, "type": "dir"})
            elif is_volume_name(c.name):
                entries.append({"name": c.name, "type": "volume", "size": c.stat().st_size})
        return {"root": root, "path": path, "entries": entries}

    @app.get("/api/volume/{root}/{path:path}")
    def volume(root: str, path: str, preview: int = Query(0, ge=0, le=1024)) -> Response:
        """A volume file, read-only; ``preview=N`` gives a strided copy with at most N voxels per axis."""
        p = roots.resolve(root, path)
        if not p.is_file():
            raise HTTPException(404, f"{root}/{path}: no such file")
        if not is_volume_name(p.name):
            raise HTTPException(400, f"{p.name}: not a volume file (.nii, .nii.gz, .nrrd, .mha)")
        if preview and p.name.lower().endswith((".nii", ".nii.gz")):
            p = make_preview(p, cache, preview)
        return FileResponse(p, media_type="application/octet-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/volume-header")
    def volume_header(root: str, path: str) -> dict[str, Any]:
        """Shape and voxel size from the header only (the viewer decides whether a preview is worth it)."""
        p = roots.resolve(root, path)
        if not p.is_file():
            raise HTTPException(404, f"{root}/{path}: no such file")
        if not p.name.lower().endswith((".nii", ".nii.gz")):
            return {"shape": None, "zooms": None}
        img = load_nifti(p)
        return {"shape": [int(n) for n in img.shape], "zooms": [float(z) for z in img.header.get_zooms()]}

    @app.get("/api/volume-stats")
    def volume_stats(root: str, path: str, names: str = "") -> dict[str, Any]:
        p = roots.resolve(root, path)
        if not p.is_file():
            raise HTTPException(404, f"{root}/{path}: no such file")
        return label_volumes(p, [n for n in names.split(",") if n] or None)

    @app.get("/api/errormap")
    def errormap(pred_root: str, pred: str, truth_root: str, truth: str) -> Response:
        p, t = roots.resolve(pred_root, pred), roots.resolve(truth_root, truth)
        for f in (p, t):
            if not f.is_file():
                raise HTTPException(404, f"{f.name}: no such file")
        return FileResponse(error_map(p, t, cache), media_type="application/octet-stream")

    @app.get("/api/datasets/check")
    def dataset_check(root: str, path: str = "", config: str = "", n_classes: int | None = None,
                      offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=500)) -> dict[str, Any]:
        from ctdl.web.datacheck import check_dataset

        p = roots.resolve(root, path)
        if not p.is_dir():
            raise HTTPException(404, f"{root}/{path}: not a folder")
        classes = None
        if config:
            cp = configs_dir / f"{sanitize_name(config)}.yaml"
            if not cp.exists():
                raise HTTPException(404, f"no saved config {config!r}")
            data = yaml.safe_load(cp.read_text()) or {}
            classes = (data.get("data") or {}).get("classes") or ["background", "kidney", "tumor"]
            n_classes = len(classes)
        result = check_dataset(p, n_classes=n_classes, offset=offset, limit=limit)
        for r in result["rows"]:
            for key in ("image", "label"):
                r[key] = _locate(r[key], Path("/")) if r.get(key) else None
        result["classes"] = classes
        return result

    # ------------------------------------------------------------ uploads
    @app.put("/api/upload")
    async def upload(request: Request, name: str) -> JSONResponse:
        """Stream the request body to ``runs/_uploads/NAME`` (sanitised), refusing past the size limit."""
        safe = sanitize_name(name, "upload")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > upload_limit:
            return JSONResponse({"detail": f"{safe}: {int(declared)} bytes exceeds the upload limit of "
                                           f"{upload_limit_mb:g} MB"}, status_code=413)
        uploads_dir.mkdir(parents=True, exist_ok=True)
        target = uploads_dir / f"{uuid.uuid4().hex[:8]}_{safe}"
        size = 0
        ok = False
        try:
            with target.open("wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > upload_limit:
                        return JSONResponse({"detail": f"{safe}: upload exceeds the limit of {upload_limit_mb:g} MB"},
                                            status_code=413)
                    fh.write(chunk)
            try:
                used = check_upload(target)
            except BadVolume as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)
            ok = True
        finally:
            if not ok:
                target.unlink(missing_ok=True)
        if used != target:
            target.unlink(missing_ok=True)
        return JSONResponse({"ok": True, "root": "runs", "path": used.relative_to(runs_path).as_posix(), "bytes": size})

    # ------------------------------------------------------------ predict
    @app.post("/api/predict")
    def predict(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Run ``ctdl predict`` with a trained run on a volume inside the roots (background process)."""
        model = _run(str(body.get("model", "")))
        src = roots.resolve(str(body.get("root", "")), str(body.get("path", "")))
        if not src.exists():
            raise HTTPException(404, f"{body.get('path')}: no such file")
        job = uuid.uuid4().hex[:10]
        out = runs_path / "_predictions" / job / f"{sanitize_name(src.name.split('.')[0])}_pred.nii.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        # the run's checkpoint file (api.predict's run-folder lookup is not relied upon)
        ckpt = next((model / f for f in ("best.pt", "last.pt") if (model / f).is_file()), model)
        cmd = [sys.executable, "-c", "import sys; from ctdl.cli import main; sys.exit(main())",
               "predict", str(src), "--model", str(ckpt), "-o", str(out)]
        log = (out.parent / "log.txt").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=manager.workdir,
                                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        predictions[job] = {"proc": proc, "out": out, "log": out.parent / "log.txt"}
        return {"job": job, "status": "running"}

    @app.get("/api/predict/{job}")
    def predict_status(job: str) -> dict[str, Any]:
        j = predictions.get(job)
        if j is None:
            raise HTTPException(404, f"no prediction job {job!r}")
        rc = j["proc"].poll()
        log = tail(j["log"])
        status = "running" if rc is None else ("finished" if rc == 0 and j["out"].exists() else "failed")
        res: dict[str, Any] = {"job": job, "status": status, "log": log, "error": find_error(log) if status == "failed" else None}
        if status == "finished":
            res["mask"] = {"root": "runs", "path": j["out"].relative_to(runs_path).as_posix()}
        return res

    return app


def _resolved(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config with every default filled in (so a partial YAML and a resolved one compare key by key)."""
    from pydantic import ValidationError

    from ctdl.config.load import config_to_dict
    from ctdl.config.schema import ExperimentConfig

    try:
        return config_to_dict(ExperimentConfig.model_validate(cfg))
    except ValidationError:
        return cfg


def _float(v: str | None) -> Any:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return v
