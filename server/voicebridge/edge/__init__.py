"""What both HTTP servers (`serve` and the emulator) do to input from the network before a handler trusts it:
which Host names they answer to (hosts.py), header text (headers.py), bounded JSON (json_body.py) and
WebSocket messages over the size limit (websocket.py). Shared so the two servers refuse the same things the
same way; each wraps the errors in its own API shape. Also how every server process is told to stop (signals.py:
SIGINT or SIGTERM)."""
