#!/usr/bin/python3
"""A raw WebSocket client of kgate in Python with Debian's python3-tornado.

Starts a kernel over REST (tornado.httpclient), runs the code given on the
command line over /api/kernels/{id}/channels with the
``v1.kernel.websocket.jupyter.org`` subprotocol (every message one binary
frame, encoded and decoded here), prints what it printed, and shuts the
kernel down.

    KGATE_URL=http://127.0.0.1:8888 KGATE_TOKEN=s3cret python3 examples/python-tornado-client.py 'print(6 * 7)'

stdout and stderr of the kernel go to ours; an error prints its traceback on
stderr and exits 1.
"""
import asyncio
import json
import os
import re
import struct
import sys
import uuid
from datetime import datetime, timezone
from urllib.parse import quote, urljoin

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

V1 = "v1.kernel.websocket.jupyter.org"


def v1_encode(channel, header, parent_header, metadata, content, buffers=()):
    """The v1 layout: little-endian uint64 n, n uint64 offsets, then the parts."""
    parts = [channel.encode()] + [json.dumps(p).encode() for p in (header, parent_header, metadata, content)]
    parts += [bytes(b) for b in buffers]
    n = len(parts) + 1
    offsets = [8 * (n + 1)]
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    return struct.pack(f"<{n + 1}Q", n, *offsets) + b"".join(parts)


def v1_decode(frame):
    """Returns (channel, header, parent_header, metadata, content, buffers)."""
    (n,) = struct.unpack_from("<Q", frame, 0)
    offsets = list(struct.unpack_from(f"<{n}Q", frame, 8))
    parts = [frame[offsets[k] : offsets[k + 1]] for k in range(n - 1)]
    channel = parts[0].decode()
    header, parent_header, metadata, content = (json.loads(p) for p in parts[1:5])
    return channel, header, parent_header, metadata, content, parts[5:]


async def main():
    base = os.environ.get("KGATE_URL", "http://127.0.0.1:8888/").rstrip("/") + "/"
    headers = {"Authorization": f"token {os.environ.get('KGATE_TOKEN', '')}", "Content-Type": "application/json"}
    code = " ".join(sys.argv[1:]) or 'print("hello from kgate")'
    http = AsyncHTTPClient()

    async def rest(method, path, body=None):
        res = await http.fetch(
            urljoin(base, path),
            method=method,
            headers=headers,
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
        )
        return json.loads(res.body) if res.body else None

    kernel = await rest("POST", "api/kernels", {"name": os.environ.get("KGATE_KERNEL", "python3")})
    kernel_url = f"api/kernels/{quote(kernel['id'])}"
    try:
        session = str(uuid.uuid4())
        ws_url = re.sub(r"^http", "ws", urljoin(base, f"{kernel_url}/channels?session_id={session}"))
        ws = await websocket_connect(HTTPRequest(ws_url, headers=headers), subprotocols=[V1])
        if ws.selected_subprotocol != V1:
            raise RuntimeError(f"the server did not select {V1} (got {ws.selected_subprotocol!r})")
        try:
            ok = await execute(ws, session, code)
        finally:
            ws.close()
    finally:
        await rest("DELETE", kernel_url)
    return 0 if ok else 1


async def execute(ws, session, code):
    header = {
        "msg_id": str(uuid.uuid4()),
        "msg_type": "execute_request",
        "session": session,
        "username": "python-tornado-client",
        "date": datetime.now(timezone.utc).isoformat(),
        "version": "5.3",
    }
    content = {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
    await ws.write_message(v1_encode("shell", header, {}, {}, content), binary=True)
    status, idle = None, False
    while status is None or not idle:
        frame = await ws.read_message()
        if frame is None:
            raise RuntimeError(f"socket closed ({ws.close_code} {ws.close_reason})")
        _channel, msg_header, parent, _metadata, msg_content, _buffers = v1_decode(frame)
        if parent.get("msg_id") != header["msg_id"]:
            continue
        msg_type = msg_header["msg_type"]
        if msg_type == "stream":
            (sys.stderr if msg_content["name"] == "stderr" else sys.stdout).write(msg_content["text"])
        elif msg_type in ("execute_result", "display_data") and "text/plain" in msg_content["data"]:
            print(msg_content["data"]["text/plain"])
        elif msg_type == "error":
            print(re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(msg_content["traceback"])), file=sys.stderr)
        elif msg_type == "execute_reply":
            status = msg_content["status"]
        elif msg_type == "status":
            idle = msg_content["execution_state"] == "idle"
    sys.stdout.flush()
    return status == "ok"


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
