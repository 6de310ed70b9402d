#!/usr/bin/env python3
"""Container health check: GET the Dask /health endpoint named by DISTML_HEALTH_URL.

Exit 0 when it answers 200 "ok", 1 otherwise. Without DISTML_HEALTH_URL (a
submitting client, which serves nothing) it exits 0.
"""
import os
import sys
import urllib.request

url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DISTML_HEALTH_URL", "")
if not url:
    sys.exit(0)
try:
    with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 (loopback URL)
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
