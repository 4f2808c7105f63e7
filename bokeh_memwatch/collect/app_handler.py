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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from bokeh.application.handlers.handler import Handler

if TYPE_CHECKING:
    from bokeh.application.application import ServerContext, SessionContext
    from bokeh.document import Document

log = logging.getLogger(__name__)

__all__ = ("MemwatchAppHandler", "own_cleanup_hooks")

#: Modules whose ``on_session_destroyed`` callbacks are the framework's, not the app's.
_FRAMEWORK_MODULES = ("bokeh.", "bokeh_memwatch.", "panel.", "param.", "holoviews.", "pyviz_comms.")


def own_cleanup_hooks(doc: Document) -> int:
    """ How many ``on_session_destroyed`` callbacks on ``doc`` are the app's own
    (Panel and Bokeh register some of their own on every Document). """
    count = 0
    for callback in list(doc.session_destroyed_callbacks):
        func = getattr(callback, "func", callback)  # functools.partial
        module = getattr(func, "__module__", None) or ""
        if not (module + ".").startswith(_FRAMEWORK_MODULES):
            count += 1
    return count


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
        #: Sessions seen, and how many had a cleanup hook of the app's own
        #: when their Document was made (this handler runs after the app's).
        self.sessions_seen = 0
        self.sessions_with_hooks = 0
        #: The application's other handlers (set by MemWatch; weak), read
        #: after each session's build for errors they recorded.
        self.siblings: Callable[[], Sequence[Handler]] = tuple
        #: Sessions whose build failed in one of the app's handlers (a
        #: script that raised: Bokeh logs it and serves the partial page),
        #: and the first such error with its traceback.
        self.sessions_failed = 0
        self.first_error: str | None = None

    def modify_document(self, doc: Document) -> None:
        context = doc.session_context
        if context is None:  # a Document made outside a server session
            return
        try:
            self.listener.document_created(self.app_path, context.id, doc)
        except Exception:
            log.exception("memwatch could not register a session of %s", self.app_path)
        self.sessions_seen += 1
        self._note_errors()
        try:
            if own_cleanup_hooks(doc):
                self.sessions_with_hooks += 1
        except Exception:
            log.debug("memwatch could not read the cleanup hooks of %s", self.app_path, exc_info=True)

    def _note_errors(self) -> None:
        """ Count this session's build as failed when a handler that ran
        before this one recorded an error (``Handler.failed``, public API;
        Bokeh resets it at every run). """
        try:
            failed = [h for h in self.siblings() if h is not self and getattr(h, "failed", False)]
            if failed:
                self.sessions_failed += 1
                if self.first_error is None:
                    handler = failed[0]
                    self.first_error = str(getattr(handler, "error_detail", None) or getattr(handler, "error", None)
                                           or "failed")[-4000:]
        except Exception:
            log.debug("memwatch could not read the handlers' errors of %s", self.app_path, exc_info=True)

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
