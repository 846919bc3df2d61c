#!/usr/bin/env bash
# Regenerate the golden wire captures in this folder from real libvirt 9.0 peers.
#
#   tests/protocol/golden/capture.sh            (as root: tshark captures on lo)
#
# It starts a throw-away reference libvirtd (tools/libvirtd_peer.py) on a
# free loopback port and records two sessions with tshark:
#
#   virsh-session.*   one interactive virsh connection over storage+tcp:
#                     pool-define-as, pool-start, pool-list, vol-create-as,
#                     vol-upload --sparse, vol-download --sparse, then ~15 s idle
#                     so that keepalive PING/PONG frames appear, then quit.
#   python-sparse.*   python3-libvirt (/usr/bin/python3): a sparse upload with
#                     sparseSendAll and a sparse download with sparseRecvAll of a
#                     file with several holes (STREAM_HOLE frames both ways).
#
# For each session it writes
#   NAME.client.bin   client->server TCP payload, reassembled, in order
#   NAME.server.bin   server->client TCP payload, reassembled, in order
#   NAME.frames.txt   tshark's libvirt dissector decode, one line per frame
# and checks that the frames found by splitting the .bin streams on their length
# words match tshark's decode exactly. Tests read only the committed files.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
for tool in tshark virsh /usr/bin/python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
/usr/bin/python3 -c 'import libvirt' || { echo "python3-libvirt missing" >&2; exit 2; }

work=$(mktemp -d /tmp/virtvol-ref-XXXXXX)
chmod 755 "$work"
daemon_pid=
tshark_pid=
cleanup() {
  [ -n "$tshark_pid" ] && kill "$tshark_pid" 2>/dev/null || true
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
info=$(cd "$repo" && python3 -m tools.libvirtd_peer "$work/state" "$port")
daemon_pid=$(sed -n 's/^pid=\([0-9]*\) .*/\1/p' <<<"$info")
uri=$(sed -n 's/.* tcp=\([^ ]*\) .*/\1/p' <<<"$info")
pool_dir=$work/state/pool
echo "reference libvirtd pid=$daemon_pid at $uri"

start_capture() {  # $1 = pcap file
  tshark -i lo -f "tcp port $port" -w "$1" >"$1.out" 2>"$1.err" &
  tshark_pid=$!
  for _ in $(seq 100); do
    grep -q '^Capturing on' "$1.err" && return 0
    sleep 0.1
  done
  cat "$1.err" >&2; echo "tshark did not start" >&2; exit 1
}
stop_capture() {
  sleep 1   # let the last segments (FIN, ACK) reach the capture
  kill -INT "$tshark_pid"; wait "$tshark_pid" || true; tshark_pid=
}

# --- session 1: one interactive virsh connection -----------------------------
/usr/bin/python3 - "$work/upload.img" <<'PY'
import sys
# 4 KiB of data at 0, a hole, 4 KiB of data at 64 KiB, a trailing hole: 128 KiB.
with open(sys.argv[1], "wb") as f:
    f.write(bytes(range(256)) * 16)
    f.seek(64 * 1024)
    f.write(b"virtvol golden data\n" * 204 + b"virtvol!")
    f.truncate(128 * 1024)
PY
start_capture "$work/virsh.pcapng"
{
  echo "pool-define-as default dir --target $pool_dir"
  echo "pool-start default"
  echo "pool-list"
  echo "vol-create-as default golden.img 128KiB --format raw"
  echo "vol-upload --pool default golden.img $work/upload.img --sparse"
  echo "vol-download --pool default golden.img $work/download.img --sparse"
  sleep 16   # commands take well under a second; the rest is idle time
  echo "quit"
} | virsh -c "$uri" >"$work/virsh.log" 2>&1
stop_capture
cat "$work/virsh.log"
cmp "$work/upload.img" "$work/download.img"

# --- session 2: python3-libvirt sparseSendAll / sparseRecvAll ----------------
/usr/bin/python3 - "$work/sparse-src.img" <<'PY'
import sys
# hole 16K | data 4K | hole 44K | data 8K | hole 56K | data 4K | trailing hole: 256 KiB.
with open(sys.argv[1], "wb") as f:
    for offset, size in ((16, 4), (64, 8), (128, 4)):
        f.seek(offset * 1024)
        f.write(bytes((offset + i) % 251 for i in range(size * 1024)))
    f.truncate(256 * 1024)
PY
start_capture "$work/python.pcapng"
/usr/bin/python3 - "$uri" "$work/sparse-src.img" "$work/sparse-dst.img" <<'PY'
import os
import sys

import libvirt

uri, src_path, dst_path = sys.argv[1:4]
conn = libvirt.open(uri)
pool = conn.storagePoolLookupByName("default")
size = os.path.getsize(src_path)
vol = pool.createXML(
    "<volume><name>sparse.img</name>"
    f"<capacity unit='bytes'>{size}</capacity><allocation>0</allocation>"
    "<target><format type='raw'/></target></volume>",
    0,
)

src = os.open(src_path, os.O_RDONLY)


def read_data(stream, nbytes, fd):
    return os.read(fd, nbytes)


def next_section(stream, fd):
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    if pos >= size:
        return [False, 0]
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        data = size
    hole = os.lseek(fd, pos, os.SEEK_HOLE) if data == pos else pos
    os.lseek(fd, pos, os.SEEK_SET)  # SEEK_DATA/SEEK_HOLE move the offset
    if data > pos:
        return [False, data - pos]
    return [True, hole - pos]


def skip_src(stream, length, fd):
    os.lseek(fd, length, os.SEEK_CUR)
    return 0


up = conn.newStream(0)
vol.upload(up, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
up.sparseSendAll(read_data, next_section, skip_src, src)
up.finish()
os.close(src)

dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def write_data(stream, buf, fd):
    return os.write(fd, buf)


def skip_dst(stream, length, fd):
    os.ftruncate(fd, os.lseek(fd, length, os.SEEK_CUR))
    return 0


down = conn.newStream(0)
vol.download(down, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
down.sparseRecvAll(write_data, skip_dst, dst)
down.finish()
os.close(dst)
conn.close()
PY
stop_capture
cmp "$work/sparse-src.img" "$work/sparse-dst.img"

# --- extraction ---------------------------------------------------------------
extract() {  # $1 = pcap, $2 = output prefix
  tshark -r "$1" -q -z follow,tcp,raw,0 2>/dev/null >"$1.follow"
  tshark -r "$1" -d "tcp.port==$port,libvirt" -Y libvirt -T pdml 2>/dev/null >"$1.pdml"
  /usr/bin/python3 - "$1.follow" "$1.pdml" "$2" "$port" <<'PY'
import re
import struct
import sys
import xml.etree.ElementTree as ET

follow_path, pdml_path, prefix, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

# follow,tcp,raw: node 0 lines flush left, node 1 lines indented by a tab.
nodes: dict[str, str] = {}
streams = {"0": bytearray(), "1": bytearray()}
with open(follow_path) as f:
    for line in f:
        m = re.match(r"Node ([01]): (\S+):(\d+)$", line.strip())
        if m:
            nodes[m.group(1)] = m.group(3)
            continue
        text = line.rstrip("\n")
        if not text.strip() or not re.fullmatch(r"\t?[0-9a-f]+", text):
            continue
        streams["1" if text.startswith("\t") else "0"] += bytes.fromhex(text.strip())
if nodes.get("1") != port:
    sys.exit(f"unexpected follow nodes {nodes}: node 1 should be the daemon on {port}")
client, server = bytes(streams["0"]), bytes(streams["1"])
with open(prefix + ".client.bin", "wb") as f:
    f.write(client)
with open(prefix + ".server.bin", "wb") as f:
    f.write(server)

NAMES = {"length", "program", "version", "procedure", "type", "serial", "status"}
rows: list[tuple[str, dict[str, str], dict[str, str]]] = []
for packet in ET.parse(pdml_path).getroot():
    srcport = None
    for proto in packet:
        if proto.get("name") == "tcp":
            for field in proto.iter("field"):
                if field.get("name") == "tcp.srcport":
                    srcport = field.get("show")
        if proto.get("name") != "libvirt":
            continue
        show: dict[str, str] = {}
        label: dict[str, str] = {}
        for field in proto.iter("field"):
            name = (field.get("name") or "").removeprefix("libvirt.")
            if name in NAMES and name not in show:
                show[name] = field.get("show") or ""
                m = re.search(r": (\S+) \(", field.get("showname") or "")
                label[name] = m.group(1) if m else ""
            elif name == "stream_hole.length":
                show["hole"] = field.get("show") or ""
        direction = "S>C" if srcport == port else "C>S"
        rows.append((direction, show, label))

header = (
    "# tshark (libvirt dissector) decode, one line per libvirt frame in wire order.\n"
    "# dir: C>S client to server, S>C server to client. hole: STREAM_HOLE length, else -.\n"
    "# dir\tlength\tprogram\tversion\tprocedure\ttype\tserial\tstatus\thole"
    "\tprocedure_name\ttype_name\tstatus_name\n"
)
with open(prefix + ".frames.txt", "w") as f:
    f.write(header)
    for direction, s, lab in rows:
        f.write(
            "\t".join(
                [
                    direction, s["length"], s["program"], s["version"], s["procedure"],
                    s["type"], s["serial"], s["status"], s.get("hole", "-"),
                    lab["procedure"] or "?", lab["type"], lab["status"],
                ]
            )
            + "\n"
        )


# Cross-check: split each byte stream on its length words; the headers must be
# exactly the frames tshark decoded, per direction and in the same order.
def split(data: bytes) -> list[tuple[int, ...]]:
    out, pos = [], 0
    while pos < len(data):
        length = struct.unpack_from(">I", data, pos)[0]
        prog, vers, proc, typ, serial, status = struct.unpack_from(">IIiiIi", data, pos + 4)
        hole = struct.unpack_from(">q", data, pos + 28)[0] if typ == 6 else -1
        out.append((length, prog, vers, proc, typ, serial, status, hole))
        pos += length
    if pos != len(data):
        sys.exit(f"{prefix}: trailing partial frame")
    return out


for direction, data in (("C>S", client), ("S>C", server)):
    mine = split(data)
    theirs = [
        (
            int(s["length"]), int(s["program"], 16), int(s["version"]), int(s["procedure"]),
            int(s["type"]), int(s["serial"]), int(s["status"]), int(s.get("hole", "-1")),
        )
        for d, s, _ in rows
        if d == direction
    ]
    if mine != theirs:
        sys.exit(f"{prefix} {direction}: byte stream and tshark decode disagree")
    print(f"{prefix.rsplit('/', 1)[-1]} {direction}: {len(data)} bytes, {len(mine)} frames")
PY
}

extract "$work/virsh.pcapng" "$here/virsh-session"
extract "$work/python.pcapng" "$here/python-sparse"
ls -l "$here"
