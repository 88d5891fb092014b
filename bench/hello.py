#!/usr/bin/env python3
"""The ceiling for any Tornado handler on this machine: a hello-world app.

Same server settings as the daemon (one process, HTTPServer, no logging of
requests), answering a small JSON body with no database behind it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import tornado.web
from tornado.httpserver import HTTPServer

from config.systemd import notify


class Hello(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"status":"ok"}')


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/.*", Hello)], log_function=lambda _h: None)
    server = HTTPServer(app)
    server.listen(port, address="127.0.0.1")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    notify("READY=1")
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
