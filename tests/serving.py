"""Launching the app inside a test, on a free loopback port."""

import socket
from pathlib import Path

MODEL = Path(__file__).resolve().parent.parent / "assets" / "default-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(**launch_kw):
    """(session, demo, url) of the app on the shipped model; close with demo.close()."""
    from app.main import build_app
    from app.session import Session

    session = Session.load(MODEL)
    demo = build_app(session)
    demo.queue(default_concurrency_limit=4)
    port = free_port()
    from app.views import APP_CSS

    launch_kw.setdefault("css", APP_CSS)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kw)
    return session, demo, f"http://127.0.0.1:{port}/"
