"""A webhook receiver for trying the bank locally (the README's example): it checks each delivery's
Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature) with the endpoint's
signing secret, using the `standardwebhooks` library rather than the bank's own code, and prints
what arrived.

    .venv/bin/python examples/webhook_receiver.py --port 9000 --secret whsec_... [--count 1]

It answers 204 to a delivery whose signature verifies and 401 to one that does not (the bank then
retries it). With --count N it exits once N deliveries have verified: 0, or 1 if --timeout passes
first.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret", required=True, help="the webhook's signing secret, whsec_...")
    parser.add_argument("--count", type=int, default=0, help="exit after this many verified deliveries")
    parser.add_argument("--timeout", type=float, default=120.0, help="with --count: give up after this")
    args = parser.parse_args(argv)

    verifier = Webhook(args.secret)
    verified = 0
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal verified
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                event = verifier.verify(body, {k.lower(): v for k, v in self.headers.items()})
            except WebhookVerificationError as exc:
                print(f"REFUSED {self.headers.get('webhook-id')}: {exc}", flush=True)
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(204)
            self.end_headers()
            data, webhook_id = event.get("data") or {}, self.headers["webhook-id"]
            print(f"verified {event.get('type')} {data.get('id', '')} (webhook-id {webhook_id})", flush=True)
            print(json.dumps(event, ensure_ascii=False), flush=True)
            verified += 1
            if args.count and verified >= args.count:
                done.set()

        def log_message(self, format: str, *log_args: object) -> None:
            pass  # one line per delivery above is enough

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    try:
        if not args.count:
            done.wait()
        elif not done.wait(args.timeout):
            print(f"{verified} of {args.count} deliveries in {args.timeout:.0f}s", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
