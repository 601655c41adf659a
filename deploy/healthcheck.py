"""The container's health check: exit 0 if this container's server answers /health with
200, 1 otherwise. Standard library only (python:3.11-slim has no curl).

The request goes to 127.0.0.1:SERVER_PORT (8000) with a Host header the server accepts:
the first name of ALLOWED_HOSTS (``localhost`` if that is a wildcard). /health is plain
HTTP even with PRODUCTION=true (it is exempt from the redirect to HTTPS).
"""

import os
import sys
import urllib.request


def host() -> str:
    for name in os.environ.get("ALLOWED_HOSTS", "").split(","):
        name = name.strip().lstrip(".")
        if name and name != "*":
            return name
    return "localhost"


def main() -> int:
    port = os.environ.get("SERVER_PORT", "8000")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers={"Host": host()})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except Exception as error:  # noqa: BLE001 - any failure is "unhealthy", said on stderr
        print(f"healthcheck: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
