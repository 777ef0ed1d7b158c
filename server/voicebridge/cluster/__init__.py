"""Bridge workers sharing calls through Redis: past one process and one machine (see the README's section on
workers).

A call lives on exactly one worker process (worker.py); Redis knows which (registry.py); the front door
(front_door.py) places new calls on the least loaded live worker (placement.py) and routes everything about a call
to its owner, while media flows between the browser and that worker directly. `serve --workers N` runs a front door
and N local workers (local.py). Batches put their call jobs on a Redis stream (jobs.py). Needs the `cluster` extra
(the redis client).
"""
