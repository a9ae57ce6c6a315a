#!/usr/bin/env python3
"""A stand-in for IANA's RDAP service on 127.0.0.1, for docs/walkthrough.md.

It says that the administrative contact of every ccTLD you ask for is ``admin@nic.<tld>.test``
(so .mt's is admin@nic.mt.test), so a request can be tried end to end on one machine, with no
network. Start it, then the daemon with examples/demo.toml, which points iana.rdap_url here.
Only the standard library: python3 examples/demo_iana.py [PORT] (default 8043).
"""

from __future__ import annotations

import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer(tld: str) -> dict[str, object]:
    return {
        "rdapConformance": ["rdap_level_0"], "objectClassName": "domain", "ldhName": tld,
        "entities": [{
            "objectClassName": "entity", "roles": ["administrative"],
            "vcardArray": ["vcard", [["version", {}, "text", "4.0"],
                                     ["fn", {}, "text", f"Demo registry of .{tld}"],
                                     ["email", {}, "text", f"admin@nic.{tld}.test"]]],
        }],
        "remarks": [{"description": ["DEMO DATA from examples/demo_iana.py, not IANA's."]}],
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        m = re.fullmatch(r"/domain/([a-z0-9-]{2,63})", self.path.lower())
        status, body = (200, answer(m.group(1))) if m else (404, {"errorCode": 404})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/rdap+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8043
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"demo IANA RDAP on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
