"""Bridge workers sharing calls through Redis (see the README's section on workers)."""
