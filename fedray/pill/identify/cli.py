"""`fedray identify | serve | export`: the pill identifier from a terminal.

    fedray identify PHOTO [PHOTO ...] [--top-k 5] [--out DIR] [--run RUN_DIR] [--detector PT]
    fedray serve [--host 127.0.0.1] [--port 8000] [--run RUN_DIR] [--detector PT]
    fedray export RUN_DIR [--detector PT] [--out DIR]

A mistake (a missing model, a file that is not a photo, an option out of range) is one line
`fedray: error: ...` on stderr and exit code 2, found before any model loads where it can be.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

from fedray.cli import run
from fedray.config import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse with fedray's error format: `fedray: error: --flag: what` and exit 2, one line
    (argparse's own is the usage block, then `fedray identify: error: argument --flag: ...`)."""

    def error(self, message: str):  # type: ignore[override]
        message = message.removeprefix("argument ").replace("\n", " ")
        self.exit(2, f"fedray: error: {message} (see `{self.prog} --help`)\n")


MAX_TOP_K = 100


def _ranged(kind: type, lo: float, hi: float | None = None):
    """An argparse type: a `kind` in [lo, hi] (Parser prints the one-line error)."""
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
    parser = Parser(prog="fedray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ident = sub.add_parser("identify", help="find and name every pill in photos")
    ident.add_argument("photos", nargs="+", help="photo files (JPEG, PNG, ...)")
    ident.add_argument("--top-k", type=_ranged(int, 1, MAX_TOP_K), default=5,
                       help=f"names listed per pill, 1-{MAX_TOP_K} and at most the classes the "
                       "classifier knows (5)")
    ident.add_argument("--out", default="identify_out",
                       help="annotated PNG + JSON per photo (two photos of one name: NAME.png, "
                       "NAME-2.png)")
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


def output_names(paths: list[str]) -> list[str]:
    """A distinct file stem per photo: its own, then NAME-2, NAME-3 for later photos of the same
    name (a/same.jpg and b/same.jpg) so that no photo's PNG / JSON overwrites another's."""
    taken: set[str] = set()
    names = []
    for path in paths:
        stem = Path(path).stem or "photo"
        name, n = stem, 1
        while name.casefold() in taken:  # casefold: one file on a case-blind disk (macOS)
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _write(path: Path, data: bytes) -> None:
    """`data` at `path` (a temporary name, then renamed: never half a file), or a ConfigError."""
    part = path.with_name(f".{path.name}.part")
    try:
        part.write_bytes(data)
        os.replace(part, path)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise ConfigError(f"--out {path.parent}: cannot write {path.name} "
                          f"({exc.strerror or exc})") from None


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
    if args.detector:
        from fedray.pill.identify.detector import check_detector_path

        check_detector_path(args.detector)
    ident = load_identifier(args.run, args.detector, args.outputs, args.conf)
    known = len(ident.classifier.class_names)
    if args.top_k > known:
        print(f"fedray: warning: --top-k {args.top_k}: the classifier knows {known} pills; "
              f"listing {known} per pill", file=sys.stderr)
    for (path, rgb), name in zip(photos, output_names([p for p, _ in photos]), strict=True):
        answer = ident(rgb, args.top_k)
        ok, png = cv2.imencode(".png", cv2.cvtColor(annotate(rgb, answer), cv2.COLOR_RGB2BGR))
        if not ok:
            raise ConfigError(f"{path}: the annotated photo could not be encoded as PNG")
        _write(out / f"{name}.png", png.tobytes())
        record = {"photo": str(Path(path).resolve()), "annotated": f"{name}.png",
                  **answer.to_json()}
        _write(out / f"{name}.json", json.dumps(record, indent=2).encode())
        print(_table(path, answer))
        print(f"  -> {name}.png, {name}.json")
    print(f"annotated photos and JSON: {out.resolve()}")
    return 2 if bad else 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or a one-line ConfigError saying why it cannot be."""
    try:  # a name that does not resolve, or no address at all
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"--host {host}: not an address to listen on ({exc})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is fine
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: already in use on {host} (another server, or a "
                              "`fedray serve` still running); pick another --port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host}: not an address of this machine; use 127.0.0.1 "
                              "(this machine only) or 0.0.0.0 (every network)") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"--port {port}: only root may listen on a port below 1024; "
                              "pick --port 1024 or above") from None
        raise ConfigError(f"--host {host} --port {port}: cannot listen there "
                          f"({exc.strerror or exc})") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    from fedray.extras import require

    require("fedray serve", "fastapi", "uvicorn")
    import uvicorn

    from fedray.pill.identify.app import load_identifier
    from fedray.pill.identify.serve import create_app

    if args.detector:
        from fedray.pill.identify.detector import check_detector_path

        check_detector_path(args.detector)
    sock = listening_socket(args.host, args.port)  # before the models load; handed to uvicorn
    try:
        app = create_app(load_identifier(args.run, args.detector, args.outputs, args.conf))
        port = sock.getsockname()[1]  # --port 0: the one the system picked
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"fedray serve: the pill identifier page is at http://{host}:{port}/  "
              "(Ctrl-C to stop)", flush=True)
        config = uvicorn.Config(app, host=args.host, port=port, log_level="warning")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fedray.extras import require

    require("fedray export", "onnx", "onnxruntime", "psutil")
    from fedray.pill.identify.classifier import find_run_dir
    from fedray.pill.identify.detector import check_detector_path
    from fedray.pill.identify.export import export_run

    run_dir = find_run_dir(args.run_dir)  # the inputs first: nothing is written for a typo
    if args.detector:
        check_detector_path(args.detector)
    export_run(run_dir, args.detector,
               None if args.out is None else writable_dir(args.out, "--out"))
    return 0


def writable_dir(path: str, flag: str) -> Path:
    """`path` as a directory that exists (made if missing) and takes files (a test file is made
    and removed), or a ConfigError naming `flag`."""
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{flag} {path}: a file is there, not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot make that directory ({exc.strerror})") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); pick "
                          f"a directory of yours") from None
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
