"""The sparse-file engine shared by the client and the daemon.

``extents`` walks data and holes, ``zeros`` holds the one rule for which data
counts as a hole, ``files`` the block-level calls (punch, allocate, writeback,
copy), ``cache`` the page-cache hygiene, ``reader`` and ``writer`` move a
stream's worth of data and holes between a file and buffers, ``sequential`` into a
FIFO or device in stream order. Nothing here
knows about RPC: errors are ``OSError``, and callers translate them.

Import the submodules directly; this package imports nothing, so that a
command that never touches a file does not pay for it.
"""
