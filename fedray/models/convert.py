"""ImageNet weights saved offline, renamed for fedray's torchvision split (`model.pretrained`).

    python -m fedray.models.convert ARCH TORCHVISION.pth OUT.pt

A module of its own (not `python -m fedray.models.torchvision_split`, which the `fedray.models`
package has imported before runpy runs it, with a warning each time).
"""

from __future__ import annotations

import sys

from fedray.config import ConfigError
from fedray.models.torchvision_split import convert_torchvision_weights

USAGE = "usage: python -m fedray.models.convert ARCH TORCHVISION.pth OUT.pt"


def main(argv: list[str]) -> int:
    """Convert, print the written path; a user's mistake is one line and exit 2."""
    if len(argv) != 3 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        print(convert_torchvision_weights(*argv))
    except ConfigError as exc:
        print(f"fedray: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
