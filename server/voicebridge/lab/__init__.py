"""The test lab: judging calls. Pass criteria (criteria.py): a scenario's `[[expect]]` entries, checked before a
call and turned into verdicts with evidence when it ends. Reads the typed call result and the scenarios only."""
