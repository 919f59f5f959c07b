"""The yardstick for /v1/nearby: a bare aiohttp handler returning a fixed JSON body of a given size.

    python bench/minimal_server.py --port 18181 --workers 2 --size 900
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal

from aiohttp import web


def serve(port: int, size: int) -> None:
    body = b'{"pad":"' + b"x" * max(size - 10, 0) + b'"}'

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/nearby", handler)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="Loopback port to listen on.")
    ap.add_argument("--workers", type=int, default=2, help="Worker processes sharing the port.")
    ap.add_argument("--size", type=int, default=900, help="Response body size in bytes.")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=serve, args=(args.port, args.size)) for _ in range(args.workers)]
    for p in procs:
        p.start()

    def stop(_signum: int, _frame: object) -> None:
        for p in procs:
            p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
