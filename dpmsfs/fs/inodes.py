"""The table of inodes the kernel knows, mapped to the real directory underneath.

Every operation works relative to descriptors (`openat`, `fstatat`, `renameat2`, ...),
never by joining path strings, so paths near PATH_MAX and concurrent renames behave as
on the native file system.

Design, chosen for the fd budget (the process limit on the tools is 20,000 and root
cannot raise it, while a `find` over a million files makes the kernel remember a
million inodes):

* A node records its parent node and its name in that parent: that is how a file is
  reached (`fstatat(parent_fd, name)`) and how a change is turned into a path.
* Regular files, symlinks and special files hold no descriptor of their own.
* Directories hold an `O_PATH` descriptor, opened lazily and kept in an LRU bounded by
  `fd_budget`; an evicted directory is reopened through its parent and checked by
  inode number, so eviction is invisible.
* A node whose name is about to disappear while the kernel still uses it (unlinked
  while open, a hard-linked file, a directory) is *pinned*: it gets an `O_PATH`
  descriptor that is never evicted, and is reached through it from then on.

Only the daemon changes the real directory while it is mounted, so (parent, name) stays
true as long as the handlers keep it up to date on rename, link and unlink.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import OrderedDict

log = logging.getLogger(__name__)

ROOT_INODE = 1
MIN_FD_BUDGET = 16
O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Node:
    """One inode the kernel holds a lookup reference to."""

    __slots__ = (
        "fd",
        "ino",
        "is_dir",
        "lookups",
        "name",
        "open_count",
        "parent",
        "pinned",
        "real_ino",
    )

    def __init__(
        self, ino: int, real_ino: int, parent: Node | None, name: bytes, is_dir: bool
    ) -> None:
        self.ino = ino
        self.real_ino = real_ino
        self.parent = parent  # None for the root and for orphans (no name any more)
        self.name = name
        self.is_dir = is_dir
        self.lookups = 0
        self.fd: int | None = None
        self.pinned = False
        self.open_count = 0

    def __repr__(self) -> str:
        return f"Node(ino={self.ino}, name={self.name!r}, lookups={self.lookups})"


class InodeTable:
    """Nodes by FUSE inode number, with a bounded cache of directory descriptors."""

    def __init__(self, root_fd: int, fd_budget: int = 4096) -> None:
        st = os.fstat(root_fd)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "work directory is not a directory")
        self.root_dev = st.st_dev
        self.root = Node(ROOT_INODE, st.st_ino, None, b"", True)
        self.root.fd = root_fd
        self.root.pinned = True
        self.root.lookups = 1
        self.fd_budget = max(fd_budget, MIN_FD_BUDGET)
        self._nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._lru: OrderedDict[Node, None] = OrderedDict()

    # --- numbering -------------------------------------------------------------------
    def fuse_ino(self, real_ino: int) -> int:
        """The inode number the kernel sees: the real one, except the root's."""
        if real_ino == self.root.real_ino:
            return ROOT_INODE
        return real_ino

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def open_dir_fds(self) -> int:
        return len(self._lru)

    def get(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise OSError(errno.ESTALE, "unknown inode") from None

    def find(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    # --- lookup counting -------------------------------------------------------------
    def remember(self, parent: Node, name: bytes, st: os.stat_result) -> Node:
        """Count one kernel lookup of `name` in `parent`, whose stat is `st`."""
        ino = self.fuse_ino(st.st_ino)
        node = self._nodes.get(ino)
        if node is None:
            is_dir = stat.S_ISDIR(st.st_mode)
            node = Node(ino, st.st_ino, parent, name, is_dir)
            self._nodes[ino] = node
            if not is_dir and st.st_nlink > 1:
                # Other names of this inode may vanish without us seeing which node
                # they belong to; a descriptor keeps it reachable whatever happens.
                self.pin(node, self.dir_fd(parent), name)
        else:
            node.parent = parent
            node.name = name
        node.lookups += 1
        return node

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups -= count
        if node.lookups <= 0 and node.open_count <= 0:
            self._drop(node)

    def release_open(self, node: Node) -> None:
        node.open_count -= 1
        if node.lookups <= 0 and node.open_count <= 0 and node is not self.root:
            self._drop(node)

    def _drop(self, node: Node) -> None:
        del self._nodes[node.ino]
        if node.fd is not None:
            self._lru.pop(node, None)
            os.close(node.fd)
            node.fd = None

    # --- descriptors -----------------------------------------------------------------
    def dir_fd(self, node: Node) -> int:
        """A descriptor of directory `node`, usable as dir_fd."""
        fd = node.fd
        if fd is not None:
            if not node.pinned:
                self._lru.move_to_end(node)
            return fd
        parent = node.parent
        if parent is None:
            raise OSError(errno.ESTALE, "directory no longer reachable")
        fd = os.open(node.name, O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=self.dir_fd(parent))
        if os.fstat(fd).st_ino != node.real_ino:
            os.close(fd)
            raise OSError(errno.ESTALE, "directory was replaced underneath")
        node.fd = fd
        self._lru[node] = None
        if len(self._lru) > self.fd_budget:
            self._evict()
        return fd

    def _evict(self) -> None:
        # The most recently used entries are the ones the current handler holds; the
        # budget floor guarantees they are never the ones closed here.
        while len(self._lru) > self.fd_budget:
            victim, _ = self._lru.popitem(last=False)
            if victim.fd is not None:
                os.close(victim.fd)
                victim.fd = None

    def locate(self, node: Node) -> tuple[int, bytes]:
        """(dir_fd, name) that reaches `node` by name, for *at calls."""
        parent = node.parent
        if parent is None:
            raise OSError(errno.ESTALE, "file no longer has a name")
        return self.dir_fd(parent), node.name

    def prepare_unlink(self, parent: Node, name: bytes, st: os.stat_result) -> Node | None:
        """`name` in `parent` (stat `st`) is about to go: keep its node reachable.

        Returns the node whose recorded name this is, to pass to `unlinked()` once the
        removal succeeded, or None when no node is recorded under that name.
        """
        node = self._nodes.get(self.fuse_ino(st.st_ino))
        if node is None or node.parent is not parent or node.name != name:
            return None
        needs_fd = node.is_dir or node.open_count > 0 or st.st_nlink > 1
        if needs_fd and not node.pinned:
            self.pin(node, self.dir_fd(parent), name)
        return node

    @staticmethod
    def unlinked(node: Node | None) -> None:
        """The name recorded for `node` is gone: from now on only its pinned fd reaches it."""
        if node is not None:
            node.parent = None

    def pin(self, node: Node, dir_fd: int, name: bytes) -> None:
        fd = os.open(name, O_PATH_FLAGS, dir_fd=dir_fd)
        if node.fd is not None:
            self._lru.pop(node, None)
            os.close(node.fd)
        node.fd = fd
        node.pinned = True

    # --- names -----------------------------------------------------------------------
    def moved(self, node: Node, new_parent: Node, new_name: bytes) -> None:
        node.parent = new_parent
        node.name = new_name

    def path(self, node: Node) -> bytes | None:
        """Path of `node` relative to the root, or None if it has no name any more."""
        if node is self.root:
            return b""
        parts = []
        current: Node | None = node
        while current is not None and current is not self.root:
            parts.append(current.name)
            current = current.parent
        if current is None:
            return None
        parts.reverse()
        return b"/".join(parts)

    def child_path(self, parent: Node, name: bytes) -> bytes | None:
        base = self.path(parent)
        if base is None:
            return None
        return base + b"/" + name if base else name

    def close_all(self) -> None:
        for node in list(self._nodes.values()):
            if node.fd is not None and node is not self.root:
                os.close(node.fd)
                node.fd = None
        self._lru.clear()
