"""TLS for the listening socket, with certificates reloadable on SIGHUP.

The server keeps one SSLContext for its lifetime; each handshake is handed to
the context built from the certificate files last loaded successfully, through
the context's SNI callback (called for every handshake, with or without SNI).
Reloading builds a complete new context first and swaps it in only when it
loaded, so a bad or half-written certificate never replaces a good one, and
connections already established keep theirs.
"""

from __future__ import annotations

import ssl

import structlog

log = structlog.get_logger("imagelist.tls")


def build_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


class ReloadableTls:
    def __init__(self, certfile: str, keyfile: str) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self._current = build_context(certfile, keyfile)
        #: The context to give the server; it stays the same object.
        self.context = build_context(certfile, keyfile)
        self.context.sni_callback = self._select

    def _select(self, conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        conn.context = self._current

    def reload(self) -> None:
        """Load the files again; on any error keep serving the old certificate."""
        try:
            fresh = build_context(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "tls_reload_failed",
                certfile=self.certfile,
                keyfile=self.keyfile,
                error=str(exc),
                keeping="previous certificate",
            )
            return
        self._current = fresh
        log.info("tls_reloaded", certfile=self.certfile, keyfile=self.keyfile)
