"""One HTTP GET with a deadline, for the connectivity checks: prints the
response body and exits 0 on 200, exits 1 with a one-line reason otherwise.

    python -m harness.topology.servers.probe http://198.19.0.10:8080/ --timeout 2
"""
from __future__ import annotations

import argparse
import sys
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as resp:
            body = resp.read().decode(errors="replace").strip()
            print(body)
            return 0 if resp.status == 200 else 1
    except Exception as exc:   # noqa: BLE001 - the probe reports any failure as one line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
