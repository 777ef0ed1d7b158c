"""What both HTTP servers (`serve` and the emulator) check in a request from the network before a handler trusts
it: which Host names they answer to (hosts.py), header text (headers.py) and bounded JSON (json_body.py). Shared
so the two servers refuse the same things the same way; each wraps the errors in its own API shape."""
