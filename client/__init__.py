"""virtvol.client: asyncio client library and the virsh-compatible ``virtvol`` command."""
