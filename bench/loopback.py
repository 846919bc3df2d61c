"""The raw loopback limit: bytes pushed through one TCP connection on 127.0.0.1,
with no protocol and no disk, by two processes (sender and receiver).

    python -m bench.loopback BYTES   -> prints the seconds taken
"""

from __future__ import annotations

import socket
import sys
import time
from multiprocessing import Process

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


def measure(total: int) -> float:
    """Seconds to move ``total`` bytes from one process to another over loopback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        receiver = Process(target=_receive, args=(listener, total))
        receiver.start()
        payload = memoryview(bytes(CHUNK))
        with socket.create_connection(listener.getsockname()) as sender:
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
    print(f"{measure(int(sys.argv[1])):.3f}")
