"""One HTTP GET with a deadline, for the connectivity checks: prints the
response body and exits 0 on 200, exits 1 with a one-line reason otherwise.

With ``--json`` any HTTP answer (a 503 too) is a success: it prints one JSON
object ``{"status", "headers", "body"}`` and exits 0; no answer (timeout,
refused) exits 1 with the one-line reason.  The Service checks read the
server's ``X-Client-Address`` header and a health-check port's status and body
this way.

    python -m harness.topology.servers.probe http://198.19.0.10:8080/ --timeout 2 [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--json", action="store_true",
                        help="print status, headers and body of any HTTP answer as JSON")
    args = parser.parse_args()
    try:
        try:
            resp = urllib.request.urlopen(args.url, timeout=args.timeout)
        except urllib.error.HTTPError as exc:
            if not args.json:
                raise
            resp = exc
        with resp:
            body = resp.read().decode(errors="replace")
            if args.json:
                print(json.dumps({"status": resp.status, "headers": dict(resp.headers.items()),
                                  "body": body}))
                return 0
            print(body.strip())
            return 0 if resp.status == 200 else 1
    except Exception as exc:   # noqa: BLE001 - the probe reports any failure as one line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
