"""A connection's pool event registrations (what python3-libvirt cannot send wrong)."""

from __future__ import annotations

import pytest

from virtvol.daemon.session import POOL_EVENT_LIFECYCLE, POOL_EVENT_REFRESH, Session
from virtvol.protocol import remote as r
from virtvol.protocol.errors import ErrorCode, ErrorReport

POOL = r.StoragePool(name="p", uuid=bytes(range(16)))
OTHER_UUID = bytes(16)


def test_a_registration_for_one_pool_hears_only_of_it() -> None:
    session = Session(read_only=False)
    mine = session.register_pool_events(r.PoolEventRegisterArgs(POOL_EVENT_REFRESH, POOL))
    every = session.register_pool_events(r.PoolEventRegisterArgs(POOL_EVENT_LIFECYCLE, None))
    assert mine.callback_id != every.callback_id
    callbacks = session.pool_event_callbacks
    assert callbacks[mine.callback_id].wants(POOL_EVENT_REFRESH, POOL.uuid)
    assert not callbacks[mine.callback_id].wants(POOL_EVENT_REFRESH, OTHER_UUID)
    assert not callbacks[mine.callback_id].wants(POOL_EVENT_LIFECYCLE, POOL.uuid)
    assert callbacks[every.callback_id].wants(POOL_EVENT_LIFECYCLE, OTHER_UUID)


def test_an_unknown_event_or_callback_is_refused() -> None:
    session = Session(read_only=False)
    with pytest.raises(ErrorReport, match="unsupported storage pool event ID 2") as refused:
        session.register_pool_events(r.PoolEventRegisterArgs(2, None))
    assert refused.value.code == ErrorCode.INTERNAL_ERROR
    registered = session.register_pool_events(r.PoolEventRegisterArgs(POOL_EVENT_LIFECYCLE, None))
    session.deregister_pool_events(r.PoolEventDeregisterArgs(registered.callback_id))
    assert session.pool_event_callbacks == {}
    with pytest.raises(ErrorReport, match=f"callback {registered.callback_id} not registered"):
        session.deregister_pool_events(r.PoolEventDeregisterArgs(registered.callback_id))
