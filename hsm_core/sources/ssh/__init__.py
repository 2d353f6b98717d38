"""The ssh source: hosts reached over SSH, each running hsm's agent.

`source` (the ComputeSource), `agent` (its channel to the remote agent), `options`
(the source's config keys), `probe` (`hsm sources test`), `sync` (code and payloads to
the host) and `collect` (results back). Nothing is imported here: asyncssh and gitpython
load only when a sweep uses an ssh source.
"""
