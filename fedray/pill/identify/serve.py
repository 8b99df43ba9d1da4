"""`fedray serve`: a local web page that names every pill in a dropped or photographed picture.

One page, no CDN assets (HTML, CSS and JS inline), two endpoints: `POST /api/identify` takes the
photo as the raw request body (never written to disk: it is decoded in memory and dropped after
the answer) and `GET /api/reference/{class}/{side}.png` serves the catalog's studio pictures.
Bad uploads get a 4xx with a one-line message: too large (413: over MAX_UPLOAD_BYTES, or over
MAX_PIXELS from the image's header, before it is decoded), not an image (415/400). Every error,
fedray's own, FastAPI's (an unknown path 404, a wrong method 405, a malformed parameter 422) and
an unexpected failure (500; the traceback goes to the server's log only), is the JSON object
`{"error": "<one line>"}`: the page shows `error`, or `error <status>` for a reply that is not
JSON. Decoding and the models run in a worker thread (one photo at a time through the models).
"""

from __future__ import annotations

import base64
import logging
import threading
import urllib.parse

import cv2
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedray.pill.identify.app import MAX_UPLOAD_BYTES, Identifier, PhotoError, decode_photo
from fedray.pill.identify.pipeline import annotate

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedray pill identifier</title>
<style>
 body{font-family:system-ui,sans-serif;margin:0;background:#f5f6f8;color:#222}
 header{background:#1f3a5f;color:#fff;padding:12px 20px}
 main{max-width:1100px;margin:auto;padding:16px}
 #drop{border:2px dashed #8aa;border-radius:10px;padding:28px;text-align:center;background:#fff}
 #drop.over{background:#e8f4ff}
 #error{color:#b00020;margin:10px 0;font-weight:600}
 .cols{display:flex;gap:18px;flex-wrap:wrap;margin-top:14px}
 #photo{max-width:560px;width:100%;border-radius:8px}
 table{border-collapse:collapse;background:#fff;min-width:380px}
 td,th{border-bottom:1px solid #dde;padding:6px 8px;text-align:left;vertical-align:middle}
 td img{width:56px;height:56px;object-fit:contain;background:#eee;border-radius:4px}
 .unknown{color:#a65f00} .alt{color:#667;font-size:.85em}
</style></head><body>
<header><b>fedray</b> &middot; pill identifier (runs on this machine; photos are not kept)</header>
<main>
 <div id="drop">Drop a photo here, or
  <input id="file" type="file" accept="image/*" capture="environment"></div>
 <div id="error" role="alert"></div>
 <div id="status"></div>
 <div class="cols"><div><img id="photo" alt=""></div>
  <table id="results"><thead><tr><th>#</th><th>pill</th><th>confidence</th><th>reference</th>
  <th>other candidates</th></tr></thead><tbody></tbody></table></div>
</main>
<script>
const drop=document.getElementById('drop'), file=document.getElementById('file');
const err=document.getElementById('error'), status=document.getElementById('status');
const body=document.querySelector('#results tbody'), photo=document.getElementById('photo');
const ESC={'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'};
function esc(s){return String(s).replace(/[&<>"]/g,c=>ESC[c]);}
async function send(f){
  err.textContent=''; status.textContent='identifying '+f.name+' ...'; body.innerHTML='';
  photo.removeAttribute('src');
  let r=null, j={};
  try{r=await fetch('/api/identify',{method:'POST',body:f,
    headers:{'Content-Type':f.type||'application/octet-stream','X-Filename':encodeURIComponent(f.name)}});
    j=await r.json();}catch(e){}
  if(!r||!r.ok||!Array.isArray(j.found)){status.textContent='';
    err.textContent=j.error||(r?'error '+r.status:'the server did not answer');return;}
  photo.src=j.image;
  status.textContent=(j.found.length?(j.found.length+' pill(s) found'):'no pill found')+
    (j.dismissed.length?' ('+j.dismissed.length+
      ' box(es) dismissed: background, a surface motif or a piece of a pill)':'');
  j.found.forEach((p,i)=>{
    const ref=p.reference?'<img alt="reference" src="'+p.reference+'">':'';
    const alt=p.top.slice(1).map(t=>esc(t[0])+' '+(100*t[1]).toFixed(1)+'%').join('<br>');
    body.insertAdjacentHTML('beforeend','<tr class="pill-row"><td>'+(i+1)+'</td><td class="name'+
      (p.class_index<0?' unknown':'')+'">'+esc(p.name)+'</td><td>'+(100*p.confidence).toFixed(1)+
      '%</td><td>'+ref+'</td><td class="alt">'+alt+'</td></tr>');
  });
}
file.addEventListener('change',()=>{if(file.files.length)send(file.files[0]);});
drop.addEventListener('dragover',e=>{e.preventDefault();drop.classList.add('over');});
drop.addEventListener('dragleave',()=>drop.classList.remove('over'));
drop.addEventListener('drop',e=>{e.preventDefault();drop.classList.remove('over');
  if(e.dataTransfer.files.length)send(e.dataTransfer.files[0]);});
</script></body></html>
"""

ACCEPTED_TYPES = ("image/", "application/octet-stream")  # matched in lower case (RFC 2045)
log = logging.getLogger("fedray")


def create_app(identifier: Identifier) -> FastAPI:
    """The web app around a loaded identifier."""
    app = FastAPI(title="fedray pill identifier", docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)  # fedray's own and the router's 404 / 405
    async def _one_line(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)  # anything else: still one line (the log has the trace)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server's log "
                                      "has the details"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    busy = threading.Lock()  # one photo at a time through the models, as before

    def answer_photo(data: bytes, name: str) -> dict:
        rgb = decode_photo(data, name)
        with busy:
            answer = identifier(rgb)
        ok, png = cv2.imencode(".png", cv2.cvtColor(annotate(rgb, answer), cv2.COLOR_RGB2BGR))
        found = []
        for f in answer.to_json()["found"]:
            ref = identifier.reference(f["class_index"]) if f["class_index"] >= 0 else None
            f["reference"] = f"/api/reference/{f['class_index']}/front.png" if ref else None
            found.append(f)
        return {
            "found": found,
            "dismissed": answer.dismissed,
            "px_per_mm": answer.px_per_mm,
            "image": "data:image/png;base64," + base64.b64encode(png.tobytes()).decode(),
            "seconds": answer.seconds,
        }

    @app.post("/api/identify")
    async def api_identify(request: Request) -> JSONResponse:
        name = upload_name(request.headers.get("x-filename", ""))
        kind = request.headers.get("content-type", "")
        if not kind.lower().startswith(ACCEPTED_TYPES):
            raise HTTPException(415, f"{name}: {kind or 'no type'} is not an image type")
        data = bytearray()
        async for chunk in request.stream():  # in memory only, capped while it arrives
            data += chunk
            if len(data) > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"{name}: over the {MAX_UPLOAD_BYTES // 2**20} MB "
                                         "upload limit")
        payload = bytes(data)
        del data
        try:  # decoding and the models in a worker thread: the page stays served meanwhile
            reply = await run_in_threadpool(answer_photo, payload, name)
        except PhotoError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except Exception as exc:  # noqa: BLE001  (a model's failure: one line, trace in the log)
            log.exception("fedray serve: identifying %s failed", name)
            return JSONResponse({"error": f"{name}: internal error while identifying the photo "
                                          f"({type(exc).__name__}); the server's log has the "
                                          "details"}, status_code=500)
        return JSONResponse(reply)

    pictures: dict[tuple[int, str], bytes] = {}

    @app.get("/api/reference/{class_index}/{side}.png")
    async def reference(class_index: int, side: str) -> Response:
        names = identifier.classifier.class_names
        if side not in ("front", "back") or not 0 <= class_index < len(names):
            raise HTTPException(404, "no such reference picture")
        path = identifier.reference(class_index, side)
        if path is None:
            raise HTTPException(404, "this dataset has no reference pictures")
        if (class_index, side) not in pictures:
            pictures[class_index, side] = pill_close_up(path)
        return Response(pictures[class_index, side], media_type="image/png")

    return app


def upload_name(header: str) -> str:
    """The page's X-Filename (percent-encoded by encodeURIComponent) as a name to show: decoded,
    control characters dropped, at most 120 characters; `upload` when there is none."""
    name = "".join(c for c in urllib.parse.unquote(header) if c.isprintable())[:120].strip()
    return name or "upload"


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: `where: what; ...`."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("path", "query", "body"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


def pill_close_up(path, pad: float = 0.15) -> bytes:
    """The studio picture at `path` cropped to a square around its pill, as PNG bytes (the whole
    picture when the pill cannot be segmented): a 56 px thumbnail of the full frame is mostly
    backdrop."""
    import numpy as np

    from fedray.pill.segment import SegmentationError, segment_reference

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    try:
        mask = segment_reference(np.ascontiguousarray(bgr[..., ::-1]))[1]
    except SegmentationError:
        mask = None
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
        half = max(xs.max() - xs.min(), ys.max() - ys.min()) * (0.5 + pad)
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(w, cx + half + 1)), int(min(h, cy + half + 1))
        bgr = bgr[y0:y1, x0:x1]
    return cv2.imencode(".png", bgr)[1].tobytes()
