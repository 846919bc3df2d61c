"""virtvol.daemon: ``virtvold``, the storage daemon."""
