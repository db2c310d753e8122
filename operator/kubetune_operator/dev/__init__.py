"""Development tools: a local control plane (cluster/) and a local node that runs pods as processes (localnode/).

Nothing outside `dev` imports it.
"""
