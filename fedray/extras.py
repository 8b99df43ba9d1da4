"""Optional packages: a one-line error naming the extra to install, before anything starts.

`pip install -e .` is what the default job needs; the rest come as extras (pyproject.toml):
`privacy` (dp-accounting), `sweep` (Optuna, HyperOpt searchers), `app` (the identify web page,
ONNX export and profile). A feature whose package is missing fails with
`fedray: error: <what> needs <package>: pip install "fedray[<extra>]"` (exit code 2), not an
ImportError traceback halfway through a run.
"""

from __future__ import annotations

import importlib.util

from fedray.config import ConfigError

# import name -> (pip name, the extra that installs it)
EXTRAS = {
    "dp_accounting": ("dp-accounting", "privacy"),
    "optuna": ("optuna", "sweep"),
    "hyperopt": ("hyperopt", "sweep"),
    "fastapi": ("fastapi", "app"),
    "uvicorn": ("uvicorn", "app"),
    "onnx": ("onnx", "app"),
    "onnxruntime": ("onnxruntime", "app"),
    "psutil": ("psutil", "app"),
}


def hint(module: str) -> str:
    """How to install `module`: the extra that brings it, or the package itself."""
    pip_name, extra = EXTRAS.get(module, (module, None))
    if extra is None:
        return f"pip install {pip_name}"
    return f'pip install "fedray[{extra}]" (or: pip install {pip_name})'


def missing(*modules: str) -> list[str]:
    """The modules of `modules` that are not installed (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(what: str, *modules: str) -> None:
    """ConfigError("<what> needs <pkg>: pip install ...") for the first module not installed."""
    for module in missing(*modules):
        pip_name = EXTRAS.get(module, (module, None))[0]
        raise ConfigError(f"{what} needs {pip_name}: {hint(module)}")
