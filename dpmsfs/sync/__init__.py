"""Sync to dpmsfs-server: the durable queue (state.py), one push pass (pusher.py), the
trio service beside the engine (service.py) and its helpers (throttle.py, trigger.py).

The daemon's sync talks to the server only through the `Backend` interface of
remote/backend.py; nothing here imports an HTTP library.
"""
