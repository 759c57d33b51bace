"""Remote storage for dpmsfs: the `dpmsfs-server` and the client backends.

Knows opaque keys and bytes only; never imports dpmsfs, FUSE or LMDB. Server side: `server`
(HTTP), `store` + `objfile` (disk), `auth`, `verify`, `server_main` (CLI). Client side:
`backend` (protocol), `http_backend`, `retry`, `memory_backend`, `faulty_backend`. Shared:
`errors`, `hashing`, `names`. The wire contract is docs/remote-api.md.
"""
