"""`fedray identify | serve | export`: the pill identifier from a terminal.

    fedray identify PHOTO [PHOTO ...] [--top-k 5] [--out DIR] [--run RUN_DIR] [--detector PT]
    fedray serve [--host 127.0.0.1] [--port 8000] [--run RUN_DIR] [--detector PT]
    fedray export RUN_DIR [--detector PT] [--out DIR]

A mistake (a missing model, a file that is not a photo) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

from fedray.cli import run
from fedray.config import ConfigError


def _ranged(kind: type, lo: float, hi: float | None = None):
    """An argparse type: a `kind` in [lo, hi] (argparse prints the one-line usage error)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = {"int": "an integer", "float": "a number"}.get(kind.__name__, kind.__name__)
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < lo or (hi is not None and value > hi):
            span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{text} is not {span}")
        return value
    return parse


def _models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="run directory of the classifier (default: latest pill run "
                        "under --outputs)")
    parser.add_argument("--outputs", default="outputs", help="where runs are (default: outputs)")
    parser.add_argument("--detector", help="detector weights (default: latest stage=detect)")
    parser.add_argument("--conf", type=_ranged(float, 0.0, 1.0), default=0.25,
                        help="detector confidence (0.25)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ident = sub.add_parser("identify", help="find and name every pill in photos")
    ident.add_argument("photos", nargs="+", help="photo files (JPEG, PNG, ...)")
    ident.add_argument("--top-k", type=_ranged(int, 1), default=5,
                       help="names listed per pill (5)")
    ident.add_argument("--out", default="identify_out", help="annotated PNG + JSON per photo")
    _models(ident)
    serve = sub.add_parser("serve", help="a local web page: drop a photo, see every pill named")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_ranged(int, 0, 65535), default=8000,
                       help="port to listen on (8000)")
    _models(serve)
    export = sub.add_parser("export", help="ONNX export of both models and an on-device profile")
    export.add_argument("run_dir", help="the classifier's run directory")
    export.add_argument("--detector", help="detector weights (default: latest stage=detect)")
    export.add_argument("--out", help="where the .onnx files go (default: RUN_DIR/export)")
    return parser


def _table(path: str, answer) -> str:
    lines = [f"{path}: {len(answer.found)} pill(s) found" if answer.found
             else f"{path}: no pill found"]
    for i, f in enumerate(answer.found, 1):
        box = ",".join(f"{v:.0f}" for v in f.box)
        names = "  ".join(f"{n} {p:.1%}" for n, p in f.top)
        lines.append(f"  {i:>2}  [{box}]  {f.name:<28} | {names}")
    if answer.dismissed:
        lines.append(f"  ({len(answer.dismissed)} box(es) dismissed: background, a surface "
                     "motif or a piece of a pill)")
    if answer.px_per_mm is not None:
        lines.append(f"  (names weighed by the pills' sizes at {answer.px_per_mm:.1f} px per mm)")
    return "\n".join(lines)


def cmd_identify(args: argparse.Namespace) -> int:
    import cv2

    from fedray.pill.identify.app import PhotoError, load_identifier, read_photo
    from fedray.pill.identify.pipeline import annotate

    photos = []
    bad = 0
    for p in args.photos:  # read every photo first: a typo fails before the models load
        try:
            photos.append((p, read_photo(p)))
        except PhotoError as exc:
            print(f"fedray: error: {exc}", file=sys.stderr)
            bad += 1
    if not photos:
        return 2
    out = writable_dir(args.out, "--out")  # before the models load
    ident = load_identifier(args.run, args.detector, args.outputs, args.conf)
    for path, rgb in photos:
        answer = ident(rgb, args.top_k)
        stem = Path(path).stem
        drawn = cv2.cvtColor(annotate(rgb, answer), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(out / f"{stem}.png"), drawn)
        (out / f"{stem}.json").write_text(json.dumps({"photo": str(path), **answer.to_json()},
                                                     indent=2))
        print(_table(path, answer))
    print(f"annotated photos and JSON: {out.resolve()}")
    return 2 if bad else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fedray.extras import require

    require("fedray serve", "fastapi", "uvicorn")
    import socket

    import uvicorn

    from fedray.pill.identify.app import load_identifier
    from fedray.pill.identify.serve import create_app

    try:  # a host this machine cannot listen on is refused before the models load
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--host {args.host}: not an address to listen on ({exc})") from None
    app = create_app(load_identifier(args.run, args.detector, args.outputs, args.conf))
    print(f"fedray identify: http://{args.host}:{args.port}/  (Ctrl-C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fedray.extras import require

    require("fedray export", "onnx", "onnxruntime", "psutil")
    from fedray.pill.identify.export import export_run

    export_run(args.run_dir, args.detector,
               None if args.out is None else writable_dir(args.out, "--out"))
    return 0


def writable_dir(path: str, flag: str) -> Path:
    """`path` as a directory that exists (made if missing), or a ConfigError naming `flag`."""
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{flag} {path}: a file is there, not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot make that directory ({exc.strerror})") from None
    return out


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`fedray ...` and `python -m fedray.pill.identify`)."""
    logging.basicConfig(level=logging.INFO, format="[fedray %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        return {"identify": cmd_identify, "serve": cmd_serve, "export": cmd_export}[
            args.command](args)
    except ConfigError as exc:
        print(f"fedray: error: {exc}", file=sys.stderr)
        return 2


def console() -> int:
    """`fedray` and `python -m fedray.pill.identify`: main(), then a quick exit (launch.py's
    gc.freeze: the interpreter's last collection over torch's objects is skipped, 0.6-1.0 s)."""
    try:
        return run(main)
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(console())
