"""virtvol.protocol: the sans-IO core of libvirt's RPC protocol (XDR, frames, state machines)."""
