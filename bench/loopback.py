"""The raw loopback limit: bytes pushed through one stream socket (TCP on 127.0.0.1
or a Unix socket), with no protocol and no disk, by two processes (sender and receiver).
A Unix socket sends with the buffer virtvol gives its own (``UNIX_SEND_BUFFER``): the
kernel's default holds it to about two thirds of that rate.

    python -m bench.loopback BYTES [tcp|unix]   -> prints the seconds taken
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from multiprocessing import Process

from virtvol.client.connection import widen_unix_send_buffer

CHUNK = 1 << 20


def _receive(listener: socket.socket, total: int) -> None:
    connection, _ = listener.accept()
    buffer = memoryview(bytearray(CHUNK))
    received = 0
    with connection:
        while received < total:
            count = connection.recv_into(buffer)
            if count == 0:
                break
            received += count
        connection.sendall(b"k")


def measure(total: int, transport: str = "tcp") -> float:
    """Seconds to move ``total`` bytes from one process to another over loopback."""
    with tempfile.TemporaryDirectory() as folder:
        if transport == "unix":
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = os.path.join(folder, "sock")
        else:
            listener = socket.socket()
            address = ("127.0.0.1", 0)
        with listener:
            listener.bind(address)
            listener.listen(1)
            receiver = Process(target=_receive, args=(listener, total))
            receiver.start()
            payload = memoryview(bytes(CHUNK))
            family = listener.family
            with socket.socket(family, socket.SOCK_STREAM) as sender:
                if family == socket.AF_UNIX:
                    widen_unix_send_buffer(sender)
                sender.connect(listener.getsockname())
                started = time.perf_counter()
                sent = 0
                while sent < total:
                    piece = payload[: min(CHUNK, total - sent)]
                    sender.sendall(piece)
                    sent += len(piece)
                sender.recv(1)
                seconds = time.perf_counter() - started
            receiver.join()
    return seconds


if __name__ == "__main__":
    print(f"{measure(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else 'tcp'):.3f}")
