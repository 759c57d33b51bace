"""Our own FUSE session layer: the kernel protocol (linux/fuse.h) spoken directly.

A leaf package like chunker/: it imports nothing from the rest of dpmsfs and not
pyfuse3. It mounts with mount(2) and `fd=N`, negotiates INIT with what the running
kernel offers (FUSE_PASSTHROUGH, HANDLE_KILLPRIV_V2, ...), reads requests in a few
worker threads each on its own cloned /dev/fuse descriptor, and hands each parsed
request to a `Filesystem` object above it; see docs/design.md, "The FUSE protocol
layer".
"""
