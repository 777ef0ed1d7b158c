"""Batches of agent-to-agent test calls: run them (runner.py), report them (report.py -> report.json,
html.py -> report.html); `voicebridge batch` is cli.py. `voicebridge soak` (soak.py, soak_registry.py) runs
batches of short calls and checks that nothing is left behind."""
