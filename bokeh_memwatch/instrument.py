""" The Bokeh application handler that tells memwatch about sessions.

memwatch adds one :class:`MemwatchAppHandler` to every Bokeh ``Application``
it watches (``Application.add``, public API).  Bokeh then calls it:

* ``modify_document`` for every new session's Document, after the app's own
  handlers, so memwatch sees sessions created and destroyed between ticks;
* ``on_session_destroyed`` once the session and its Document are destroyed;
* ``on_server_loaded`` / ``on_server_unloaded`` when the server starts and
  stops, in every worker process and on the server's IOLoop: this is where
  the sampler starts, so history begins with the server.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from bokeh.application.handlers.handler import Handler

if TYPE_CHECKING:
    from bokeh.application.application import ServerContext, SessionContext
    from bokeh.document import Document

log = logging.getLogger(__name__)

__all__ = ("MemwatchAppHandler",)


class _Listener(Protocol):
    def document_created(self, app_path: str, session_id: str, document: Document) -> None: ...
    def session_destroyed(self, app_path: str, session_id: str) -> None: ...
    def server_loaded(self, app_path: str, server_context: ServerContext) -> None: ...
    def server_unloaded(self, app_path: str) -> None: ...


class MemwatchAppHandler(Handler):
    """ Forwards a Bokeh application's lifecycle to memwatch; changes nothing. """

    def __init__(self, app_path: str, listener: _Listener) -> None:
        super().__init__()
        self.app_path = app_path
        self.listener = listener

    def modify_document(self, doc: Document) -> None:
        context = doc.session_context
        if context is None:  # a Document made outside a server session
            return
        try:
            self.listener.document_created(self.app_path, context.id, doc)
        except Exception:
            log.exception("memwatch could not register a session of %s", self.app_path)

    def on_server_loaded(self, server_context: ServerContext) -> None:
        try:
            self.listener.server_loaded(self.app_path, server_context)
        except Exception:
            log.exception("memwatch could not start for %s", self.app_path)

    def on_server_unloaded(self, server_context: ServerContext) -> None:
        try:
            self.listener.server_unloaded(self.app_path)
        except Exception:
            log.exception("memwatch could not stop for %s", self.app_path)

    async def on_session_destroyed(self, session_context: SessionContext) -> None:
        try:
            self.listener.session_destroyed(self.app_path, session_context.id)
        except Exception:
            log.exception("memwatch could not record a destroyed session of %s", self.app_path)
