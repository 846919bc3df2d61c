"""Benchmarks: virtvol measured side by side with real libvirt and the loopback limit."""
